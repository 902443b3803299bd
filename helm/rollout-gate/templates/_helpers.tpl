{{/* Chart name, truncated to the 63 characters a Kubernetes name allows. */}}
{{- define "rollout-gate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name, unless it already contains the chart name. */}}
{{- define "rollout-gate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rollout-gate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "rollout-gate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rollout-gate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "rollout-gate.labels" -}}
helm.sh/chart: {{ include "rollout-gate.chart" . }}
{{ include "rollout-gate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rollout-gate
{{- end }}

{{- define "rollout-gate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "rollout-gate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository@digest when a digest is pinned, else repository:tag (tag defaults to appVersion). */}}
{{- define "rollout-gate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "rollout-gate.usesSasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end }}
{{- end }}

{{- define "rollout-gate.usesTls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{- define "rollout-gate.saslSecretName" -}}
{{- default (printf "%s-kafka" (include "rollout-gate.fullname" .)) .Values.kafka.sasl.existingSecret }}
{{- end }}

{{- define "rollout-gate.saslSecretKey" -}}
{{- if .Values.kafka.sasl.existingSecret }}{{ .Values.kafka.sasl.existingSecretKey }}{{ else }}password{{ end }}
{{- end }}

{{- define "rollout-gate.policyConfigMapName" -}}
{{- default (printf "%s-policy" (include "rollout-gate.fullname" .)) .Values.policy.existingConfigMap }}
{{- end }}

{{/* The policy text the chart ships in its ConfigMap. */}}
{{- define "rollout-gate.policyContent" -}}
{{- if .Values.policy.content }}
{{- .Values.policy.content }}
{{- else }}
{{- .Files.Get "files/policy.yaml" }}
{{- end }}
{{- end }}

{{/* Settings that cannot be expressed in values.schema.json; fails the render with a clear message. */}}
{{- define "rollout-gate.validate" -}}
{{- if include "rollout-gate.usesSasl" . }}
{{- if not .Values.kafka.sasl.mechanism }}
{{- fail (printf "kafka.sasl.mechanism is required with kafka.securityProtocol=%s (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if not .Values.kafka.sasl.username }}
{{- fail (printf "kafka.sasl.username is required with kafka.securityProtocol=%s" .Values.kafka.securityProtocol) }}
{{- end }}
{{- if and (not .Values.kafka.sasl.existingSecret) (not .Values.kafka.sasl.password) }}
{{- fail "SASL needs a password: set kafka.sasl.existingSecret (a Secret holding it) or kafka.sasl.password" }}
{{- end }}
{{- end }}
{{- if and (or .Values.kafka.ssl.certFile .Values.kafka.ssl.keyFile) (not (and .Values.kafka.ssl.certFile .Values.kafka.ssl.keyFile)) }}
{{- fail "kafka.ssl.certFile and kafka.ssl.keyFile go together (mutual TLS)" }}
{{- end }}
{{- if and (or .Values.kafka.ssl.certFile .Values.kafka.ssl.keyFile) (not .Values.kafka.ssl.existingSecret) }}
{{- fail "kafka.ssl.certFile/keyFile name keys of kafka.ssl.existingSecret, which is not set" }}
{{- end }}
{{- end }}
