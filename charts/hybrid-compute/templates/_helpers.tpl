{{/* The chart's name, overridable with nameOverride. */}}
{{- define "hybrid-compute.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The operator's object names. The release name alone when it already contains the
chart's name, so `helm install hybrid-compute` gives "hybrid-compute", not
"hybrid-compute-hybrid-compute". Kubernetes names stop at 63 characters.
*/}}
{{- define "hybrid-compute.fullname" -}}
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

{{- define "hybrid-compute.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object the chart renders. */}}
{{- define "hybrid-compute.labels" -}}
helm.sh/chart: {{ include "hybrid-compute.chart" . }}
{{ include "hybrid-compute.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hybrid-compute
{{- end }}

{{/* The labels a Deployment selects its pods by; they must never change. */}}
{{- define "hybrid-compute.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hybrid-compute.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hybrid-compute.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hybrid-compute.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's image; the tag defaults to the chart's appVersion. */}}
{{- define "hybrid-compute.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The operator's in-cluster Service address, which LiteLLM's router hook calls. */}}
{{- define "hybrid-compute.apiUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "hybrid-compute.fullname" .) .Release.Namespace (int .Values.operator.apiPort) }}
{{- end }}

{{- define "hybrid-compute.postgresName" -}}
{{- printf "%s-postgres" (include "hybrid-compute.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hybrid-compute.agentName" -}}
{{- printf "%s-gpu-agent" (include "hybrid-compute.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
