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

{{/* Selector labels of one component: (list $ "worker") or (list $ "api"). */}}
{{- define "rollout-gate.componentSelectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "rollout-gate.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "rollout-gate.componentLabels" -}}
{{- $ := index . 0 -}}
helm.sh/chart: {{ include "rollout-gate.chart" $ }}
{{ include "rollout-gate.componentSelectorLabels" . }}
app.kubernetes.io/version: {{ $.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $.Release.Service }}
app.kubernetes.io/part-of: rollout-gate
{{- end }}

{{/* The worker's (and the release's shared objects') labels. */}}
{{- define "rollout-gate.selectorLabels" -}}
{{ include "rollout-gate.componentSelectorLabels" (list . "worker") }}
{{- end }}

{{- define "rollout-gate.labels" -}}
{{ include "rollout-gate.componentLabels" (list . "worker") }}
{{- end }}

{{/* The verdict API's Deployment and Service: <fullname>-api, so that a release named rollout-gate
in namespace rollout-gate serves http://rollout-gate-api.rollout-gate.svc.cluster.local:8090, the URL
deploy/argo and deploy/flagger use. */}}
{{- define "rollout-gate.apiFullname" -}}
{{- printf "%s-api" (include "rollout-gate.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}

{{/* The OpenTelemetry bridge's Deployment and PodMonitor: <fullname>-otel-bridge. */}}
{{- define "rollout-gate.otelBridgeFullname" -}}
{{- printf "%s-otel-bridge" (include "rollout-gate.fullname" . | trunc 51 | trimSuffix "-") }}
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

{{- define "rollout-gate.tlsDir" -}}/etc/rollout-gate/kafka-tls{{- end }}

{{- define "rollout-gate.mountsTls" -}}
{{- if and (include "rollout-gate.usesTls" .) .Values.kafka.ssl.existingSecret }}true{{ end }}
{{- end }}

{{/* The Kafka connection as ROLLOUT_GATE_KAFKA_* variables, the same for every component (the worker's
settings and connectors/config.py read the same names): (list $ "worker"|"api"|"otel-bridge"). */}}
{{- define "rollout-gate.kafkaEnv" -}}
{{- $ := index . 0 }}
{{- $component := index . 1 }}
{{- $tlsDir := include "rollout-gate.tlsDir" $ -}}
- name: ROLLOUT_GATE_KAFKA_BOOTSTRAP
  value: {{ $.Values.kafka.bootstrap | quote }}
- name: ROLLOUT_GATE_KAFKA_SECURITY_PROTOCOL
  value: {{ $.Values.kafka.securityProtocol | quote }}
{{- if include "rollout-gate.usesSasl" $ }}
- name: ROLLOUT_GATE_KAFKA_SASL_MECHANISM
  value: {{ $.Values.kafka.sasl.mechanism | quote }}
- name: ROLLOUT_GATE_KAFKA_SASL_USERNAME
  value: {{ $.Values.kafka.sasl.username | quote }}
- name: ROLLOUT_GATE_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "rollout-gate.saslSecretName" $ }}
      key: {{ include "rollout-gate.saslSecretKey" $ }}
{{- end }}
{{- if include "rollout-gate.mountsTls" $ }}
{{- with $.Values.kafka.ssl.caFile }}
- name: ROLLOUT_GATE_KAFKA_SSL_CAFILE
  value: {{ printf "%s/%s" $tlsDir . | quote }}
{{- end }}
{{- with $.Values.kafka.ssl.certFile }}
- name: ROLLOUT_GATE_KAFKA_SSL_CERTFILE
  value: {{ printf "%s/%s" $tlsDir . | quote }}
{{- end }}
{{- with $.Values.kafka.ssl.keyFile }}
- name: ROLLOUT_GATE_KAFKA_SSL_KEYFILE
  value: {{ printf "%s/%s" $tlsDir . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Operator-command authentication from auth.existingSecret: the HMAC key that signs (API) and
verifies (worker) operator commands, and the API's bearer token. (list $ "worker"|"api") */}}
{{- define "rollout-gate.authEnv" -}}
{{- $ := index . 0 }}
{{- $component := index . 1 }}
{{- with $.Values.auth.existingSecret }}
{{- if $.Values.auth.commandHmacKeyKey }}
- name: ROLLOUT_GATE_COMMAND_HMAC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.auth.commandHmacKeyKey }}
{{- end }}
{{- if and (eq $component "api") $.Values.auth.apiTokenKey }}
- name: ROLLOUT_GATE_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.auth.apiTokenKey }}
{{- end }}
{{- end }}
{{- end }}

{{/* topologySpreadConstraints for one component, each with that component's labelSelector unless
it names its own. (list $ "worker"|"api") */}}
{{- define "rollout-gate.topologySpread" -}}
{{- $ := index . 0 }}
{{- $selector := include "rollout-gate.componentSelectorLabels" . | fromYaml }}
{{- range $.Values.topologySpreadConstraints }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $c | nindent 2 | trim }}
{{- end }}
{{- end }}

{{/* The ports of kafka.bootstrap, unless networkPolicy.egress.kafka.ports names them: a JSON list. */}}
{{- define "rollout-gate.kafkaPorts" -}}
{{- $ports := list }}
{{- if .Values.networkPolicy.egress.kafka.ports }}
{{- $ports = .Values.networkPolicy.egress.kafka.ports }}
{{- else }}
{{- range splitList "," .Values.kafka.bootstrap }}
{{- $ports = append $ports (regexFind "[0-9]+$" (trim .) | atoi) }}
{{- end }}
{{- end }}
{{- toJson (uniq $ports) }}
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
{{- if and .Values.podDisruptionBudget.enabled (kindIs "invalid" .Values.podDisruptionBudget.minAvailable) (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable) }}
{{- fail "podDisruptionBudget.enabled: set podDisruptionBudget.maxUnavailable or minAvailable" }}
{{- end }}
{{- if and .Values.dataDir.existingClaim (gt (int .Values.replicaCount) 1) }}
{{- fail "dataDir.existingClaim: one volume cannot hold the data directories of several workers; keep replicaCount 1 or use the emptyDir (state is rebuilt from Kafka)" }}
{{- end }}
{{- end }}

{{/* The worker Service's address, which the API asks for live views and command checks. */}}
{{- define "rollout-gate.workerUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "rollout-gate.fullname" .) .Release.Namespace .Values.metrics.port -}}
{{- end }}

{{/* Decision notifications (stream/notify.py): webhook URLs are credentials (a Slack incoming
webhook URL is one), so they come from notifications.existingSecret, never from values. */}}
{{- define "rollout-gate.notifyEnv" -}}
{{- with .Values.notifications.existingSecret }}
- name: ROLLOUT_GATE_NOTIFY_SLACK_URLS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.notifications.slackUrlsKey }}
      optional: true
- name: ROLLOUT_GATE_NOTIFY_WEBHOOK_URLS
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.notifications.webhookUrlsKey }}
      optional: true
- name: ROLLOUT_GATE_NOTIFY_ACTIONS
  value: {{ $.Values.notifications.actions | quote }}
{{- end }}
{{- end }}
