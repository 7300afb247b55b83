{{/*
Names and numbers every template shares. The object names are fixed (logferry-*), not derived
from the release name: the forwarder owns each node's /var/log reading and its
/var/lib/logferry spool, so there is one logferry per cluster, and the cluster-scoped objects
(CRD, ClusterRoles, PriorityClass) could not be shared between two anyway.
*/}}

{{/* The aggregators' and the operator's namespace: the release's. */}}
{{- define "logferry.namespace" -}}
{{ .Release.Namespace }}
{{- end }}

{{/* The forwarder's namespace (Pod Security "privileged"): never the release's ("restricted"). */}}
{{- define "logferry.forwarderNamespace" -}}
{{- $name := .Values.namespaces.forwarder | default (printf "%s-forwarder" .Release.Namespace) -}}
{{- if eq $name .Release.Namespace -}}
{{- fail (printf "namespaces.forwarder must differ from the release namespace %q: the forwarder needs Pod Security \"privileged\", everything else runs at \"restricted\"" $name) -}}
{{- end -}}
{{ $name }}
{{- end }}

{{/* Ports: the daemons' config files, their containers, Services and NetworkPolicies all take them from here. */}}
{{- define "logferry.forwardPort" -}}24224{{- end }}
{{- define "logferry.metricsPort" -}}2020{{- end }}
{{- define "logferry.operatorHealthPort" -}}8080{{- end }}
{{- define "logferry.auditPort" -}}2022{{- end }}

{{/* The headless Service's full name: the forwarders resolve it from another namespace, and the aggregators' certificate carries it. */}}
{{- define "logferry.aggregatorHost" -}}
logferry-aggregator-headless.{{ include "logferry.namespace" . }}.svc.{{ .Values.clusterDomain }}
{{- end }}

{{/* Labels of every object of a component: include "logferry.labels" "forwarder". */}}
{{- define "logferry.labels" -}}
app.kubernetes.io/name: logferry
app.kubernetes.io/component: {{ . }}
{{- end }}

{{/* image: repository:tag of a component's image values. */}}
{{- define "logferry.image" -}}
{{ .repository }}:{{ .tag }}
{{- end }}

{{/*
A values section rendered into a daemon's config next to keys the chart sets itself (paths on
the pod's volumes, ports, Secret files): refuse a values key that would override one of those.
include "logferry.noOverride" (list "forwarder.config.spool" $section (list "directory"))
*/}}
{{- define "logferry.noOverride" -}}
{{- $where := index . 0 -}}
{{- $section := index . 1 -}}
{{- range index . 2 -}}
{{- if hasKey $section . -}}
{{- fail (printf "%s.%s is set by the chart (it must match the pod's mounts and ports)" $where .) -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* NetworkPolicy peers of the Prometheus that scrapes the metrics ports. */}}
{{- define "logferry.prometheusPeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .Values.networkPolicy.prometheus.namespace }}
  podSelector:
    matchLabels:
      {{- toYaml .Values.networkPolicy.prometheus.podLabels | nindent 6 }}
{{- end }}

{{/* The egress rule to the store (networkPolicy.store): the aggregators' and the auditor's. */}}
{{- define "logferry.storeEgress" -}}
- to:
    {{- toYaml .Values.networkPolicy.store.to | nindent 4 }}
  ports:
    {{- range .Values.networkPolicy.store.ports }}
    - {protocol: {{ .protocol | default "TCP" }}, port: {{ .port }}}
    {{- end }}
{{- end }}

{{/* A duration as `logferry audit` takes it (90s, 5m, 2h, 1d, or plain seconds) in seconds: include "logferry.seconds" "5m" */}}
{{- define "logferry.seconds" -}}
{{- $text := toString . -}}
{{- $unit := regexFind "[smhd]$" $text -}}
{{- mul (int (trimSuffix $unit $text)) (get (dict "" 1 "s" 1 "m" 60 "h" 3600 "d" 86400) $unit) -}}
{{- end }}

{{/* The Kubernetes API server's ports (and addresses, when given) as an egress rule. */}}
{{- define "logferry.apiServerEgress" -}}
{{- if .Values.networkPolicy.apiServer.cidrs -}}
- to:
    {{- range .Values.networkPolicy.apiServer.cidrs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
{{- else -}}
- ports:
{{- end }}
    {{- range .Values.networkPolicy.apiServer.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end }}
