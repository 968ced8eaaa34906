{{/* The chart's name (nameOverride wins). */}}
{{- define "skiff.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RELEASE-skiff, or fullnameOverride; at most 63 characters. */}}
{{- define "skiff.fullname" -}}
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

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "skiff.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object has. */}}
{{- define "skiff.labels" -}}
helm.sh/chart: {{ include "skiff.chart" . }}
app.kubernetes.io/name: {{ include "skiff.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: skiff
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels selecting one component's pods: pass (dict "ctx" $ "component" "apiserver"). */}}
{{- define "skiff.selectorLabels" -}}
app.kubernetes.io/name: {{ include "skiff.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* A component's labels: the common ones and its selector. */}}
{{- define "skiff.componentLabels" -}}
{{ include "skiff.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image, tag defaulting to the appVersion. */}}
{{- define "skiff.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The API server's ServiceAccount. */}}
{{- define "skiff.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "skiff.fullname" .) .Values.serviceAccount.name }}
{{- else if .Values.serviceAccount.name }}
{{- .Values.serviceAccount.name }}
{{- else }}
{{- fail "serviceAccount.create=false needs serviceAccount.name: an account of the API server's own (whoever runs as it may read the admin's credentials), never the namespace's default" }}
{{- end }}
{{- end }}

{{/* The Secret the API server publishes the credentials in. */}}
{{- define "skiff.credentialsSecret" -}}
{{- default (printf "%s-credentials" (include "skiff.fullname" .)) .Values.credentials.secretName }}
{{- end }}

{{/* The Secret holding the API servers' shared cluster token (with etcd). */}}
{{- define "skiff.clusterTokenSecret" -}}
{{- default (printf "%s-cluster-token" (include "skiff.fullname" .)) .Values.etcd.clusterTokenSecret }}
{{- end }}

{{/* The API's in-cluster host: SERVICE.NAMESPACE.svc. */}}
{{- define "skiff.apiHost" -}}
{{- printf "%s.%s.svc" (include "skiff.fullname" .) .Release.Namespace }}
{{- end }}

{{/* The URL the components reach the API at. */}}
{{- define "skiff.apiURL" -}}
{{- printf "https://%s:%d" (include "skiff.apiHost" .) (int .Values.service.port) }}
{{- end }}
