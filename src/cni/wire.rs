//! The protocol between `tortie-ipam` and the node agent's IPAM server: one request per unix
//! socket connection, each message a 4-byte big-endian length and a JSON body. The plugin sends
//! what a runtime gave it (the `CNI_*` environment and stdin) and prints the answer as is, so a
//! runtime sees the same results and errors whichever side did the work. Pure: no I/O here.
//!
//! Two implementations of the one framing: the agent reads and writes with tokio-util's
//! [`LengthDelimitedCodec`] ([`codec`]); `tortie-ipam`, a short blocking process, frames by hand
//! ([`encode`], [`frame_len`]) so that it needs no async runtime to start. Both are checked
//! against each other below, byte for byte.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio_util::codec::LengthDelimitedCodec;

use super::error::CniError;

/// Where `tortie agent` listens and `tortie-ipam` looks by default (`ipam.socket`).
pub const DEFAULT_SOCKET: &str = "/var/run/tortie/ipam.sock";
/// Bound on one message (a network config is a few KB).
pub const MAX_FRAME: usize = 4 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The `CNI_*` variables the runtime set.
    pub env: BTreeMap<String, String>,
    /// The network config, exactly as read from stdin.
    pub stdin: String,
    /// The node the plugin resolved (`nodename`, `nodename_file`, host name).
    pub node: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "camelCase")]
pub enum Response {
    /// Success: `output` goes to stdout (nothing when `None`), exit status 0.
    Ok { output: Option<Value> },
    /// Failure: `output` is the CNI error JSON for stdout, exit status 1.
    Failed { code: u32, msg: String, output: Value },
    /// Not served here (e.g. another CRD mode); the plugin runs the request itself.
    Refused { reason: String },
}

impl Response {
    /// The answer for a failed request, in the version the config asked for.
    pub fn failed(e: &CniError, stdin: &[u8]) -> Response {
        Response::Failed {
            code: e.code(),
            msg: e.to_string(),
            output: e.to_json(&error_version(stdin)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes is larger than the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// The `CNI_*` part of an environment.
pub fn cni_env<'a>(vars: impl IntoIterator<Item = (&'a String, &'a String)>) -> BTreeMap<String, String> {
    vars.into_iter()
        .filter(|(k, _)| k.starts_with("CNI_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The CNI version errors are answered in: the config's when it is readable and supported.
pub fn error_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| super::result::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.0.0".into())
}

/// The framing as a codec (the agent's side): 4-byte big-endian length, then at most
/// [`MAX_FRAME`] bytes of body.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

/// A message's body, without its length (what [`codec`] frames).
pub fn body<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).expect("wire messages serialise")
}

/// One message on the wire: length header and body (the plugin's side).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = body(msg);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The body length a header announces.
pub fn frame_len(header: [u8; 4]) -> Result<usize, WireError> {
    let n = u32::from_be_bytes(header) as usize;
    if n > MAX_FRAME {
        return Err(WireError::TooLarge(n));
    }
    Ok(n)
}

pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip<T: Serialize + DeserializeOwned>(m: &T) -> T {
        let bytes = encode(m);
        let n = frame_len(bytes[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, bytes.len() - 4);
        decode(&bytes[4..]).unwrap()
    }

    #[test]
    fn responses_round_trip() {
        for r in [
            Response::Ok { output: None },
            Response::Ok {
                output: Some(serde_json::json!({"cniVersion": "1.0.0", "ips": []})),
            },
            Response::Refused { reason: "v3".into() },
        ] {
            assert_eq!(roundtrip(&r), r);
        }
        let e = CniError::Exhausted("pool p is full".into());
        let r = Response::failed(&e, br#"{"cniVersion":"0.4.0"}"#);
        match roundtrip(&r) {
            Response::Failed { code, msg, output } => {
                assert_eq!(code, 103);
                assert_eq!(msg, "pool p is full");
                // The same JSON the in-process path prints.
                assert_eq!(output, e.to_json("0.4.0"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_frames_and_garbage_are_refused() {
        assert!(matches!(
            frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()),
            Err(WireError::TooLarge(_))
        ));
        assert!(decode::<Request>(b"{").is_err());
        assert_eq!(error_version(b"not json"), "1.0.0");
        assert_eq!(error_version(br#"{"cniVersion":"9.9.9"}"#), "1.0.0");
    }

    #[test]
    fn only_cni_variables_are_sent() {
        let vars: BTreeMap<String, String> = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_ARGS", "K8S_POD_NAME=a"),
            ("HOME", "/root"),
            ("KUBECONFIG", "/x"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let env = cni_env(&vars);
        assert_eq!(env.keys().collect::<Vec<_>>(), ["CNI_ARGS", "CNI_COMMAND"]);
    }

    /// What the plugin writes, the agent's codec reads, and the other way round; the codec
    /// refuses what the plugin refuses.
    fn through_the_codec<T: Serialize + DeserializeOwned>(m: &T) -> T {
        use tokio_util::bytes::BytesMut;
        use tokio_util::codec::{Decoder, Encoder};
        let mut buf = BytesMut::from(&encode(m)[..]);
        let frame = codec().decode(&mut buf).unwrap().expect("one whole frame");
        assert!(buf.is_empty());
        let mut out = BytesMut::new();
        codec().encode(frame.freeze(), &mut out).unwrap();
        assert_eq!(&out[..], &encode(m)[..], "the codec frames as the plugin does");
        decode(&out[4..]).unwrap()
    }

    #[test]
    fn the_codec_is_the_plugins_framing() {
        use tokio_util::bytes::BytesMut;
        use tokio_util::codec::Decoder;
        let r = Response::Refused { reason: "v3".into() };
        assert_eq!(through_the_codec(&r), r);
        // A header announcing more than MAX_FRAME is refused before any body is read.
        let mut big = BytesMut::from(&((MAX_FRAME + 1) as u32).to_be_bytes()[..]);
        assert!(codec().decode(&mut big).is_err());
        // A partial frame waits for the rest.
        let whole = encode(&r);
        let mut part = BytesMut::from(&whole[..whole.len() - 1]);
        assert!(codec().decode(&mut part).unwrap().is_none());
    }

    proptest! {
        #[test]
        fn requests_round_trip_through_the_codec(
            env in proptest::collection::btree_map("CNI_[A-Z]{1,8}", ".{0,40}", 0..6),
            stdin in ".{0,200}",
            node in "[a-z0-9.-]{1,30}",
        ) {
            let r = Request { env, stdin, node };
            prop_assert_eq!(through_the_codec(&r), r);
        }

        #[test]
        fn requests_round_trip(
            env in proptest::collection::btree_map("CNI_[A-Z]{1,8}", ".{0,40}", 0..6),
            stdin in ".{0,200}",
            node in "[a-z0-9.-]{1,30}",
        ) {
            let r = Request { env, stdin, node };
            prop_assert_eq!(roundtrip(&r), r);
        }
    }
}
