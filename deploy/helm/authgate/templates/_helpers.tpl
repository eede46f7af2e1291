{{- define "authgate.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "authgate.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "authgate.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "authgate.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "authgate.fullname" .) -}}
{{- end -}}

{{- define "authgate.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The AUTHGATE_* environment shared by the gateway, the migration job and sidecars. */}}
{{- define "authgate.env" -}}
- name: AUTHGATE_STORE
  valueFrom: {secretKeyRef: {name: {{ include "authgate.secretName" . }}, key: store}}
- name: AUTHGATE_CACHE
  valueFrom: {secretKeyRef: {name: {{ include "authgate.secretName" . }}, key: cache}}
- name: AUTHGATE_PEPPER
  valueFrom: {secretKeyRef: {name: {{ include "authgate.secretName" . }}, key: pepper}}
- name: AUTHGATE_ADMIN_TOKEN
  valueFrom: {secretKeyRef: {name: {{ include "authgate.secretName" . }}, key: admin-token}}
- name: AUTHGATE_UPSTREAM
  value: {{ .Values.config.upstream | quote }}
- name: AUTHGATE_TOKEN_PREFIX
  value: {{ .Values.config.tokenPrefix | quote }}
- name: AUTHGATE_DEFAULT_RATE_LIMIT
  value: {{ .Values.config.defaultRateLimit | quote }}
- name: AUTHGATE_FAILED_AUTH_LIMIT
  value: {{ .Values.config.failedAuthLimit | quote }}
- name: AUTHGATE_LOCAL_CACHE_TTL_S
  value: {{ .Values.config.localCacheTtlS | quote }}
- name: AUTHGATE_UPSTREAM_TIMEOUT_S
  value: {{ .Values.config.upstreamTimeoutS | quote }}
- name: AUTHGATE_ROUTES
  value: {{ .Values.config.routes | toJson | quote }}
- name: AUTHGATE_ROLES
  value: {{ .Values.config.roles | toJson | quote }}
- name: AUTHGATE_ALERTS
  valueFrom: {secretKeyRef: {name: {{ include "authgate.secretName" . }}, key: alerts, optional: true}}
{{- end -}}
