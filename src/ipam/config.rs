//! `ipam configure`: changes to the IPAM configuration object (`IPAMConfig default` in v1 mode,
//! `IPAMConfiguration default` in v3), a compare-and-swap like every other IPAM write. Fields not
//! named in the change, and fields this version of tortie does not model, are kept.

use super::store::StoreError;
use super::{Ipam, IpamError};
use crate::api::IPAMConfigSpec;

/// What to set; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigChange {
    pub strict_affinity: Option<bool>,
    /// 0 means Calico's default (20).
    pub max_blocks_per_host: Option<u32>,
    /// `Enabled` or `Disabled`.
    pub kube_virt_vm_address_persistence: Option<String>,
}

impl ConfigChange {
    pub fn is_empty(&self) -> bool {
        *self == ConfigChange::default()
    }

    /// Applies the change; returns whether anything differs.
    pub fn apply(&self, spec: &mut IPAMConfigSpec) -> bool {
        let before = spec.clone();
        if let Some(v) = self.strict_affinity {
            spec.strict_affinity = v;
        }
        if let Some(v) = self.max_blocks_per_host {
            spec.max_blocks_per_host = Some(i64::from(v));
        }
        if let Some(v) = &self.kube_virt_vm_address_persistence {
            spec.kube_virt_vm_address_persistence = Some(v.clone());
        }
        *spec != before
    }
}

/// Calico's bound on a compare-and-swap loop.
const RETRIES: usize = 100;

impl Ipam {
    /// Applies `change` to the cluster's IPAM configuration, creating it (from Calico's defaults)
    /// when there is none. Returns the configuration as written (or as found, if unchanged).
    pub async fn configure(&self, change: &ConfigChange) -> Result<IPAMConfigSpec, IpamError> {
        let store = self.store();
        for _ in 0..RETRIES {
            match store.get_config().await? {
                Some(mut obj) => {
                    if !change.apply(&mut obj.spec) {
                        return Ok(obj.spec);
                    }
                    match store.update_config(&obj).await {
                        Ok(o) => return Ok(o.spec),
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                None => {
                    let mut spec = IPAMConfigSpec::calico_defaults();
                    change.apply(&mut spec);
                    match store.create_config(spec).await {
                        Ok(o) => return Ok(o.spec),
                        Err(StoreError::AlreadyExists { .. } | StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(IpamError::Contention {
            what: "the IPAM configuration default".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_sets_only_what_it_names() {
        let mut spec = IPAMConfigSpec {
            ip_cooldown_seconds: Some(30),
            ..IPAMConfigSpec::calico_defaults()
        };
        let c = ConfigChange {
            strict_affinity: Some(true),
            ..Default::default()
        };
        assert!(c.apply(&mut spec));
        assert!(spec.strict_affinity && spec.auto_allocate_blocks);
        assert_eq!(
            (spec.max_blocks_per_host, spec.ip_cooldown_seconds),
            (None, Some(30))
        );
        // Applying it again changes nothing (no write).
        assert!(!c.apply(&mut spec));
        let c = ConfigChange {
            max_blocks_per_host: Some(4),
            ..Default::default()
        };
        assert!(c.apply(&mut spec));
        assert_eq!(spec.effective_max_blocks_per_host(), 4);
        assert!(ConfigChange::default().is_empty());
    }
}
