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

{{/* Redis URL without credentials; with redis.tls.enabled (chart's Redis) rediss:// and the mounted CA. */}}
{{- define "vineppo.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- $scheme := ternary "rediss" "redis" .Values.redis.tls.enabled -}}
{{- $query := ternary (printf "?ssl_ca_certs=%s/ca.crt" (include "vineppo.redisCaDir" .)) "" .Values.redis.tls.enabled -}}
{{- printf "%s://%s-redis:6379/0%s" $scheme (include "vineppo.fullname" .) $query -}}
{{- else -}}
{{- required "set redis.externalUrl when redis.enabled is false" .Values.redis.externalUrl -}}
{{- end -}}
{{- end -}}

{{- define "vineppo.redisCaDir" -}}/etc/redis-tls{{- end -}}

{{- define "vineppo.redisSecretName" -}}
{{- .Values.redis.auth.existingSecret | default (printf "%s-redis-auth" (include "vineppo.fullname" .)) -}}
{{- end -}}

{{/* A client's Redis settings: include "vineppo.redisEnv" (list $ "VINEPPO_ROLLOUT_").
With redis.auth.enabled the password comes from the Secret as <PREFIX>REDIS_PASSWORD and is
also put into the URL by Kubernetes' $(VAR) expansion (the trainer's CLI reads only the URL). */}}
{{- define "vineppo.redisEnv" -}}
{{- $root := index . 0 -}}
{{- $prefix := index . 1 -}}
{{- $url := include "vineppo.redisUrl" $root -}}
{{- if $root.Values.redis.auth.enabled }}
{{- if contains "@" $url }}
{{- fail "redis.externalUrl must not carry credentials: put the password in redis.auth (password or existingSecret)" }}
{{- end }}
- name: {{ $prefix }}REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "vineppo.redisSecretName" $root }}
      key: {{ $root.Values.redis.auth.key }}
{{- $url = regexReplaceAll "^(rediss?)://" $url (printf "${1}://:$(%sREDIS_PASSWORD)@" $prefix) }}
{{- end }}
- name: {{ $prefix }}REDIS_URL
  value: {{ $url | quote }}
{{- end -}}

{{/* The CA of Redis's TLS certificate, for clients: volume and mount (only with redis.tls.enabled). */}}
{{- define "vineppo.redisCaVolume" -}}
{{- if .Values.redis.tls.enabled }}
- name: redis-tls-ca
  secret:
    secretName: {{ required "set redis.tls.existingSecret (a Secret with tls.crt, tls.key, ca.crt) when redis.tls.enabled" .Values.redis.tls.existingSecret }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "vineppo.redisCaMount" -}}
{{- if .Values.redis.tls.enabled }}
- name: redis-tls-ca
  mountPath: {{ include "vineppo.redisCaDir" . }}
  readOnly: true
{{- end }}
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
