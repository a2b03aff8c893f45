{{/* Names, labels and the CRD-mode table shared by every template. */}}

{{- define "tortie.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tortie.operatorName" -}}{{ include "tortie.fullname" . }}-operator{{- end -}}
{{- define "tortie.agentName" -}}{{ include "tortie.fullname" . }}-agent{{- end -}}
{{- define "tortie.cniName" -}}{{ include "tortie.fullname" . }}-cni{{- end -}}

{{- define "tortie.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tortie
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include with (list $ "operator"). */}}
{{- define "tortie.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ $.Chart.Name }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "tortie.image" -}}
{{- $img := index . 0 -}}{{- $chart := index . 1 -}}
{{- if $img.digest -}}
{{ $img.repository }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ $img.tag | default $chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* The Calico API group of the chosen mode. */}}
{{- define "tortie.calicoGroup" -}}
{{- if eq .Values.crdMode "v3" -}}projectcalico.org{{- else -}}crd.projectcalico.org{{- end -}}
{{- end -}}

{{/* The IPAM configuration's plural differs between the modes. */}}
{{- define "tortie.ipamConfigPlural" -}}
{{- if eq .Values.crdMode "v3" -}}ipamconfigurations{{- else -}}ipamconfigs{{- end -}}
{{- end -}}

{{- define "tortie.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tortie.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* The API server endpoint for host-network pods, when set. */}}
{{- define "tortie.apiserverEnv" -}}
{{- with .Values.kubernetesServiceEndpoint }}
{{- if .host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .port | default "443" | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* What an IPAM engine needs, in tortie-ipam (the CNI account) and in the agent's IPAM server
alike: the pools, the IPAM config and IP reservations to read, the node's labels (pools'
nodeSelector), and the IPAM objects to write with compare-and-swap updates. The pod and namespace
rules differ (the CNI plugin gets one pod; the server watches its node's pods) and are the
callers'. */}}
{{- define "tortie.ipamRules" -}}
{{- $group := include "tortie.calicoGroup" . -}}
- apiGroups: [""]
  resources: [nodes]
  verbs: [get]
- apiGroups: [{{ $group | quote }}]
  resources: [ippools, {{ include "tortie.ipamConfigPlural" . }}, ipreservations]
  verbs: [get, list, watch]
- apiGroups: [{{ $group | quote }}]
  resources: [ipamblocks, blockaffinities, ipamhandles]
  verbs: [get, list, watch, create, update, delete]
{{- end -}}

{{/* The agent serves the node's IPAM requests (agent.ipam.enabled, with the agent on). */}}
{{- define "tortie.agentIpam" -}}
{{- if and .Values.agent.enabled .Values.agent.ipam.enabled }}true{{ end -}}
{{- end -}}
