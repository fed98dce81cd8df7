{{/* Names, labels and shared snippets of the vineppo chart. */}}

{{- define "vineppo.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vineppo.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include "vineppo.selector" (list $ "rollout") */}}
{{- define "vineppo.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "vineppo.image" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{- define "vineppo.secretName" -}}
{{- if .Values.apiToken.existingSecret -}}
{{- .Values.apiToken.existingSecret -}}
{{- else -}}
{{- printf "%s-api-token" (include "vineppo.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "vineppo.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis:6379/0" (include "vineppo.fullname" .) -}}
{{- else -}}
{{- required "set redis.externalUrl when redis.enabled is false" .Values.redis.externalUrl -}}
{{- end -}}
{{- end -}}

{{- define "vineppo.rewardUrl" -}}
{{- printf "http://%s-reward:%d" (include "vineppo.fullname" .) (int .Values.reward.port) -}}
{{- end -}}

{{- define "vineppo.rolloutUrl" -}}
{{- printf "http://%s-rollout:%d" (include "vineppo.fullname" .) (int .Values.rollout.port) -}}
{{- end -}}

{{- define "vineppo.checkpointsClaim" -}}
{{- .Values.storage.checkpoints.existingClaim | default (printf "%s-checkpoints" (include "vineppo.fullname" .)) -}}
{{- end -}}

{{- define "vineppo.modelsClaim" -}}
{{- .Values.storage.models.existingClaim | default (printf "%s-models" (include "vineppo.fullname" .)) -}}
{{- end -}}

{{/* The API token as an env var of the service with this prefix: include "vineppo.apiTokenEnv" (list $ "VINEPPO_ROLLOUT_") */}}
{{- define "vineppo.apiTokenEnv" -}}
{{- $root := index . 0 -}}
- name: {{ index . 1 }}API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "vineppo.secretName" $root }}
      key: {{ $root.Values.apiToken.key }}
{{- end -}}

{{- define "vineppo.containerSecurityContext" -}}
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}
