{{/*
Helm's standard labels, on every object's metadata (not on selectors or pod
templates, so a chart upgrade alone does not restart pods).
*/}}
{{- define "volguard.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* The namespace of every namespaced object. */}}
{{- define "volguard.namespace" -}}
{{ required "namespace.name must be set" .Values.namespace.name }}
{{- end -}}

{{/* The image of volguard's container. */}}
{{- define "volguard.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* true when the second scheduler is deployed; fails on an unknown mode. */}}
{{- define "volguard.secondScheduler" -}}
{{- if eq .Values.scheduler.mode "second" -}}
true
{{- else if ne .Values.scheduler.mode "snippet" -}}
{{- fail (printf "scheduler.mode must be second or snippet, not %q" .Values.scheduler.mode) -}}
{{- end -}}
{{- end -}}

{{/*
A YAML scalar for volguard's config: a string stays plain when it is a
word that YAML cannot read as anything else (letters, digits, . _ / -,
starting with a letter, not a boolean or null), and is double-quoted
otherwise; numbers and booleans as they are.
*/}}
{{- define "volguard.scalar" -}}
{{- if kindIs "string" . -}}
{{- if and (regexMatch "^[A-Za-z][A-Za-z0-9._/-]*$" .) (not (has (lower .) (list "true" "false" "yes" "no" "on" "off" "y" "n" "null"))) -}}
{{ . }}
{{- else -}}
{{ quote . }}
{{- end -}}
{{- else -}}
{{ toJson . }}
{{- end -}}
{{- end -}}

{{/* A flow sequence of scalars: ["a", "b"]. */}}
{{- define "volguard.flowList" -}}
[{{ range $i, $v := . }}{{ if $i }}, {{ end }}{{ quote $v }}{{ end }}]
{{- end -}}

{{/*
One entry of the config's `drivers`, keys in a fixed order, with a comment
naming its mode. Unknown keys fail the render: volguard refuses them too.
*/}}
{{- define "volguard.driver" -}}
{{- $d := .driver -}}
{{- $known := list "name" "csiDriver" "flexDriver" "flexVolumeIdOption" "storageClasses" "sourceKinds" "resourceTemplate" "devicePathTemplate" "attachLimit" -}}
{{- range $key, $_ := $d }}
{{- if not (has $key $known) }}
{{- fail (printf "drivers[%d]: unknown key %q (known: %s)" $.index $key (join ", " $known)) }}
{{- end }}
{{- end -}}
- name: {{ include "volguard.scalar" (required (printf "drivers[%d].name must be set" .index) $d.name) }}
{{- range $key := list "csiDriver" "flexDriver" "flexVolumeIdOption" }}
{{- if hasKey $d $key }}
  {{ $key }}: {{ include "volguard.scalar" (get $d $key) }}
{{- end }}
{{- end }}
{{- range $key := list "storageClasses" "sourceKinds" }}
{{- if hasKey $d $key }}
  {{ $key }}: {{ include "volguard.flowList" (get $d $key) }}
{{- end }}
{{- end }}
{{- if hasKey $d "resourceTemplate" }}
  # Device-plugin mode: a node has the volume iff allocatable[resource] >= 1.
  resourceTemplate: {{ include "volguard.scalar" $d.resourceTemplate }}
{{- end }}
{{- if hasKey $d "devicePathTemplate" }}
  devicePathTemplate: {{ include "volguard.scalar" $d.devicePathTemplate }}
{{- end }}
{{- with $d.attachLimit }}
  # Attach mode. Limit precedence: node annotation > CSINode > default.
  attachLimit:
{{- $limitKeys := list "fromCSINode" "nodeAnnotation" "default" }}
{{- range $key, $_ := . }}
{{- if not (has $key $limitKeys) }}
{{- fail (printf "drivers[%d].attachLimit: unknown key %q (known: %s)" $.index $key (join ", " $limitKeys)) }}
{{- end }}
{{- end }}
{{- range $key := $limitKeys }}
{{- if hasKey $.driver.attachLimit $key }}
    {{ $key }}: {{ include "volguard.scalar" (get $.driver.attachLimit $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
volguard's config file. The ConfigMap holds it, and its checksum on the pod
template makes `helm upgrade` roll the pods when it changes (volguard reads
it only at start). With the default values it is, to the byte, the one
manifests/base/configmap.yaml ships (manifests/overlays/remediation with
remediation.enabled).
*/}}
{{- define "volguard.config" -}}
{{- $c := .Values.config -}}
{{- if not (has $c.onError (list "allow" "deny")) -}}
{{- fail (printf "config.onError must be allow or deny, not %q" $c.onError) -}}
{{- end -}}
annotationPrefix: {{ include "volguard.scalar" $c.annotationPrefix }}
# allow: on volguard's own errors the pod is admitted unchanged, with a warning.
onError: {{ $c.onError }}
{{- if include "volguard.secondScheduler" . }}
# No marker resource: the second scheduler (scheduler/) sends volguard
# every pod it schedules. When volguard is added to an existing scheduler
# instead (../docs/extender-snippet.yaml), set volguard.io/volumes here: it
# must match managedResources[].name there.
markerResource: ""
{{- else }}
# The marker the existing scheduler's extender routes on: it must match
# managedResources[].name there (the chart's install notes print the stanza).
markerResource: volguard.io/volumes
{{- end }}
# The two example drivers, which are also the built-in default: replace them
# with the drivers (or StorageClasses, PV source kinds) of your cluster.
drivers:
{{- if not .Values.drivers }}
{{- fail "drivers: list at least one driver" }}
{{- end }}
{{- range $i, $d := .Values.drivers }}
{{ include "volguard.driver" (dict "driver" $d "index" $i) | indent 2 }}
{{- end }}
livenessProbe:
  # Needs the shell below in the workload image; opt out per pod with
  # the annotation volguard.io/liveness-probe: "false".
  enabled: {{ $c.livenessProbe.enabled }}
  shell: {{ include "volguard.flowList" $c.livenessProbe.shell }}
  check: {{ include "volguard.scalar" $c.livenessProbe.check }}
{{- range $key := list "initialDelaySeconds" "periodSeconds" "timeoutSeconds" "failureThreshold" }}
  {{ $key }}: {{ include "volguard.scalar" (get $c.livenessProbe $key) }}
{{- end }}
scheduling:
  requireRegisteredDriver: {{ $c.scheduling.requireRegisteredDriver }}
  exclusiveReadWriteOnce: {{ $c.scheduling.exclusiveReadWriteOnce }}
{{- if include "volguard.secondScheduler" . }}
  # Pods with managed volumes that name no scheduler (or default-scheduler)
  # are sent to the second scheduler (scheduler/), whose extender is
  # volguard; a pod opts out with the annotation volguard.io/route: "false".
  # Remove this line when volguard is added to an existing scheduler
  # instead (../docs/extender-snippet.yaml).
  schedulerName: volguard-scheduler
{{- end }}
{{- with .Values.remediation }}
{{- if .enabled }}
# Opt-in (docs/remediation.md): evict pods whose device-plugin volume
# left their node. A pod opts out with volguard.io/remediate: "false".
remediation:
  enabled: true
  gracePeriodSeconds: {{ include "volguard.scalar" .gracePeriodSeconds }}
  maxEvictionsPerMinute: {{ include "volguard.scalar" .maxEvictionsPerMinute }}
  # true: record the Event and the metric, evict nothing.
  dryRun: {{ .dryRun }}
  # true: also evict pods no controller owns (nothing recreates them),
  # as kubectl drain --force does.
  evictBarePods: {{ .evictBarePods }}
  lease:
    name: {{ include "volguard.scalar" .lease.name }}
    namespace: {{ include "volguard.scalar" (include "volguard.leaseNamespace" $) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The namespace of remediation's Lease. */}}
{{- define "volguard.leaseNamespace" -}}
{{ .Values.remediation.lease.namespace | default (include "volguard.namespace" .) }}
{{- end -}}

{{/*
volguard as a kube-scheduler extender, through the Service volguard-extender
(ClientIP affinity: one replica answers one scheduler): the second
scheduler's, and the stanza the install notes print for an existing one.
*/}}
{{- define "volguard.extender" -}}
urlPrefix: "https://volguard-extender.{{ include "volguard.namespace" . }}.svc:443"
filterVerb: filter
prioritizeVerb: prioritize
weight: 1
enableHTTPS: true
tlsConfig:
  # ca.crt of the Secret volguard-tls (mounted by the Deployment).
  caFile: /etc/volguard-scheduler/ca/ca.crt
  serverName: volguard.{{ include "volguard.namespace" . }}.svc
  # The client certificate volguard requires on /filter and /prioritize
  # (Secret volguard-scheduler-client); client-go re-reads the files
  # when they are rotated.
  certFile: /etc/volguard-scheduler/client/tls.crt
  keyFile: /etc/volguard-scheduler/client/tls.key
httpTimeout: 5s
# Requests carry NodeNames only; volguard keeps its own node cache.
nodeCacheCapable: true
# false: while volguard is down, pods that need it stay Pending (and are
# retried) instead of landing on a node without their volume.
ignorable: false
{{- end -}}

{{/* The second scheduler's KubeSchedulerConfiguration. */}}
{{- define "volguard.schedulerConfig" -}}
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: true
  resourceNamespace: {{ include "volguard.namespace" . }}
  resourceName: volguard-scheduler
# Show the extender every node that passed the in-tree filters. With the
# default (a sample of 5-50% of the nodes on clusters over 100 nodes), a
# pod for which only a few nodes hold a free slot or its volume fails its
# scheduling attempt whenever the sample misses them.
percentageOfNodesToScore: 100
profiles:
  - schedulerName: volguard-scheduler
extenders:
  - # The Service with ClientIP affinity (one replica answers this scheduler).
    {{- include "volguard.extender" . | nindent 4 }}
    # No managedResources: every pod of this scheduler goes to volguard
    # (pods without managed volumes pass at once). A marker resource would
    # route them too, but kube-scheduler's requeueing (the NodeResourcesFit
    # hint) does not skip ignoredByScheduler resources: a pod it once
    # turned away, e.g. for a detached device, would wait for the 5-minute
    # flush after the device came back instead of being retried at once.
{{- end -}}
