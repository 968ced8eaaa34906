//! Request bodies in Kubernetes' protobuf (`application/vnd.kubernetes.protobuf`),
//! which client-go's typed clients send (kubectl's `create deployment`,
//! `create configmap`, `expose`; helm's release Secrets): the
//! `k8s\0` envelope, Kubernetes' own messages (k8s-pb), turned into the
//! JSON that [`skiff::json`] reads. Kubernetes' field names are the
//! proto field names Skiff's messages use, which their serde forms accept
//! beside the JSON names; the few Kubernetes spells differently are
//! renamed. Replies stay JSON, which those clients accept too.

use std::collections::BTreeMap;

use base64::Engine as _;
use prost::Message as _;
use serde_json::{Map, Value};

/// The envelope's magic bytes.
const MAGIC: &[u8] = b"k8s\0";

/// The media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// A protobuf value as JSON.
trait ToJson {
    fn to_json(&self) -> Value;
}

/// What a list may hold (not bytes: a `Vec<u8>` is base64).
trait Item: ToJson {}

impl ToJson for String {
    fn to_json(&self) -> Value {
        Value::String(self.clone())
    }
}
impl Item for String {}

impl ToJson for bool {
    fn to_json(&self) -> Value {
        Value::Bool(*self)
    }
}

impl ToJson for i32 {
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}
impl Item for i32 {}

impl ToJson for i64 {
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}
impl Item for i64 {}

impl ToJson for f64 {
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
}

impl<T: ToJson> ToJson for Option<T> {
    fn to_json(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToJson::to_json)
    }
}

impl<T: Item> ToJson for Vec<T> {
    fn to_json(&self) -> Value {
        Value::Array(self.iter().map(ToJson::to_json).collect())
    }
}

impl<T: ToJson> ToJson for BTreeMap<String, T> {
    fn to_json(&self) -> Value {
        Value::Object(self.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
    }
}

fn bytes(value: &Option<Vec<u8>>) -> Value {
    value.as_ref().map_or(Value::Null, |b| {
        Value::String(base64::engine::general_purpose::STANDARD.encode(b))
    })
}

fn bytes_map(value: &BTreeMap<String, Vec<u8>>) -> Value {
    Value::Object(
        value
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(v)),
                )
            })
            .collect(),
    )
}

/// Sets `field` unless it is unset or empty (Kubernetes' encoder writes
/// its plain strings even when empty: `selfLink: ""`), by the name
/// Skiff's messages use.
fn put(map: &mut Map<String, Value>, field: &str, value: Value) {
    let empty = match &value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    if empty {
        return;
    }
    // Kubernetes' inlined sources (`hostPath` beside `name`).
    if let (
        "volume_source" | "persistent_volume_source" | "ingress_rule_value",
        Value::Object(inlined),
    ) = (field, &value)
    {
        map.extend(inlined.clone());
        return;
    }
    let field = field.trim_start_matches("r#");
    let field = match field {
        "non_resource_ur_ls" => "non_resource_urls",
        "pod_cid_rs" => "pod_cidrs",
        "target_ww_ns" => "target_wwns",
        "u_id" => "uid",
        "a_pi_group" => "api_group",
        other => other,
    };
    map.insert(field.to_string(), value);
}

// Kubernetes' special types, which JSON writes as scalars.

/// RFC 3339 in UTC, at the given precision.
fn rfc3339(seconds: i64, nanos: i32, micros: bool) -> Value {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(seconds) else {
        return Value::Null;
    };
    let at = at + time::Duration::nanoseconds(i64::from(nanos));
    let text = if micros {
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    } else {
        at.replace_nanosecond(0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    };
    Value::String(text)
}

impl ToJson for k8s_pb::apimachinery::pkg::apis::meta::v1::Time {
    fn to_json(&self) -> Value {
        rfc3339(self.seconds.unwrap_or(0), self.nanos.unwrap_or(0), false)
    }
}
impl Item for k8s_pb::apimachinery::pkg::apis::meta::v1::Time {}

impl ToJson for k8s_pb::apimachinery::pkg::apis::meta::v1::MicroTime {
    fn to_json(&self) -> Value {
        rfc3339(self.seconds.unwrap_or(0), self.nanos.unwrap_or(0), true)
    }
}

impl ToJson for k8s_pb::apimachinery::pkg::apis::meta::v1::Duration {
    fn to_json(&self) -> Value {
        Value::String(format!("{}s", self.duration.unwrap_or(0) / 1_000_000_000))
    }
}

impl ToJson for k8s_pb::apimachinery::pkg::api::resource::Quantity {
    fn to_json(&self) -> Value {
        self.string.to_json()
    }
}

impl ToJson for k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
    fn to_json(&self) -> Value {
        match self.r#type {
            Some(1) => self.str_val.to_json(),
            _ => Value::from(self.int_val.unwrap_or(0)),
        }
    }
}

/// Raw JSON carried in bytes (managed fields, extensions).
fn raw_json(raw: &Option<Vec<u8>>) -> Value {
    raw.as_deref()
        .and_then(|r| serde_json::from_slice(r).ok())
        .unwrap_or(Value::Null)
}

impl ToJson for k8s_pb::apimachinery::pkg::apis::meta::v1::FieldsV1 {
    fn to_json(&self) -> Value {
        raw_json(&self.raw)
    }
}

impl ToJson for k8s_pb::apimachinery::pkg::runtime::RawExtension {
    fn to_json(&self) -> Value {
        raw_json(&self.raw)
    }
}

macro_rules! to_json {
    ($($ty:path { $($field:ident $(= $how:ident)?),* $(,)? };)*) => {
        $(
            impl ToJson for $ty {
                fn to_json(&self) -> Value {
                    let mut map = Map::new();
                    $( put(&mut map, stringify!($field), to_json!(@value self.$field $(, $how)?)); )*
                    Value::Object(map)
                }
            }
            impl Item for $ty {}
        )*
    };
    (@value $e:expr) => { ToJson::to_json(&$e) };
    (@value $e:expr, bytes) => { bytes(&$e) };
    (@value $e:expr, bytes_map) => { bytes_map(&$e) };
}

/// Every message of the groups Skiff serves, by its fields (read from
/// k8s-pb: Kubernetes' field names).
#[rustfmt::skip]
mod messages {
    use super::*;
    to_json! {
    k8s_pb::api::core::v1::AwsElasticBlockStoreVolumeSource { volume_id, fs_type, partition, read_only };
    k8s_pb::api::core::v1::Affinity { node_affinity, pod_affinity, pod_anti_affinity };
    k8s_pb::api::core::v1::AppArmorProfile { r#type, localhost_profile };
    k8s_pb::api::core::v1::AttachedVolume { name, device_path };
    k8s_pb::api::core::v1::AvoidPods { prefer_avoid_pods };
    k8s_pb::api::core::v1::AzureDiskVolumeSource { disk_name, disk_uri, caching_mode, fs_type, read_only, kind };
    k8s_pb::api::core::v1::AzureFilePersistentVolumeSource { secret_name, share_name, read_only, secret_namespace };
    k8s_pb::api::core::v1::AzureFileVolumeSource { secret_name, share_name, read_only };
    k8s_pb::api::core::v1::Binding { metadata, target };
    k8s_pb::api::core::v1::CSIPersistentVolumeSource { driver, volume_handle, read_only, fs_type, volume_attributes, controller_publish_secret_ref, node_stage_secret_ref, node_publish_secret_ref, controller_expand_secret_ref, node_expand_secret_ref };
    k8s_pb::api::core::v1::CSIVolumeSource { driver, read_only, fs_type, volume_attributes, node_publish_secret_ref };
    k8s_pb::api::core::v1::Capabilities { add, drop };
    k8s_pb::api::core::v1::CephFsPersistentVolumeSource { monitors, path, user, secret_file, secret_ref, read_only };
    k8s_pb::api::core::v1::CephFsVolumeSource { monitors, path, user, secret_file, secret_ref, read_only };
    k8s_pb::api::core::v1::CinderPersistentVolumeSource { volume_id, fs_type, read_only, secret_ref };
    k8s_pb::api::core::v1::CinderVolumeSource { volume_id, fs_type, read_only, secret_ref };
    k8s_pb::api::core::v1::ClientIpConfig { timeout_seconds };
    k8s_pb::api::core::v1::ClusterTrustBundleProjection { name, signer_name, label_selector, optional, path };
    k8s_pb::api::core::v1::ComponentCondition { r#type, status, message, error };
    k8s_pb::api::core::v1::ComponentStatus { metadata, conditions };
    k8s_pb::api::core::v1::ConfigMap { metadata, immutable, data, binary_data = bytes_map };
    k8s_pb::api::core::v1::ConfigMapEnvSource { local_object_reference, optional };
    k8s_pb::api::core::v1::ConfigMapKeySelector { local_object_reference, key, optional };
    k8s_pb::api::core::v1::ConfigMapNodeConfigSource { namespace, name, uid, resource_version, kubelet_config_key };
    k8s_pb::api::core::v1::ConfigMapProjection { local_object_reference, items, optional };
    k8s_pb::api::core::v1::ConfigMapVolumeSource { local_object_reference, items, default_mode, optional };
    k8s_pb::api::core::v1::Container { name, image, command, args, working_dir, ports, env_from, env, resources, resize_policy, restart_policy, restart_policy_rules, volume_mounts, volume_devices, liveness_probe, readiness_probe, startup_probe, lifecycle, termination_message_path, termination_message_policy, image_pull_policy, security_context, stdin, stdin_once, tty };
    k8s_pb::api::core::v1::ContainerExtendedResourceRequest { container_name, resource_name, request_name };
    k8s_pb::api::core::v1::ContainerImage { names, size_bytes };
    k8s_pb::api::core::v1::ContainerPort { name, host_port, container_port, protocol, host_ip };
    k8s_pb::api::core::v1::ContainerResizePolicy { resource_name, restart_policy };
    k8s_pb::api::core::v1::ContainerRestartRule { action, exit_codes };
    k8s_pb::api::core::v1::ContainerRestartRuleOnExitCodes { operator, values };
    k8s_pb::api::core::v1::ContainerState { waiting, running, terminated };
    k8s_pb::api::core::v1::ContainerStateRunning { started_at };
    k8s_pb::api::core::v1::ContainerStateTerminated { exit_code, signal, reason, message, started_at, finished_at, container_id };
    k8s_pb::api::core::v1::ContainerStateWaiting { reason, message };
    k8s_pb::api::core::v1::ContainerStatus { name, state, last_state, ready, restart_count, image, image_id, container_id, started, allocated_resources, resources, volume_mounts, user, allocated_resources_status, stop_signal };
    k8s_pb::api::core::v1::ContainerUser { linux };
    k8s_pb::api::core::v1::DaemonEndpoint { port };
    k8s_pb::api::core::v1::DownwardAPIProjection { items };
    k8s_pb::api::core::v1::DownwardAPIVolumeFile { path, field_ref, resource_field_ref, mode };
    k8s_pb::api::core::v1::DownwardAPIVolumeSource { items, default_mode };
    k8s_pb::api::core::v1::EmptyDirVolumeSource { medium, size_limit };
    k8s_pb::api::core::v1::EndpointAddress { ip, hostname, node_name, target_ref };
    k8s_pb::api::core::v1::EndpointPort { name, port, protocol, app_protocol };
    k8s_pb::api::core::v1::EndpointSubset { addresses, not_ready_addresses, ports };
    k8s_pb::api::core::v1::Endpoints { metadata, subsets };
    k8s_pb::api::core::v1::EnvFromSource { prefix, config_map_ref, secret_ref };
    k8s_pb::api::core::v1::EnvVar { name, value, value_from };
    k8s_pb::api::core::v1::EnvVarSource { field_ref, resource_field_ref, config_map_key_ref, secret_key_ref, file_key_ref };
    k8s_pb::api::core::v1::EphemeralContainer { ephemeral_container_common, target_container_name };
    k8s_pb::api::core::v1::EphemeralContainerCommon { name, image, command, args, working_dir, ports, env_from, env, resources, resize_policy, restart_policy, restart_policy_rules, volume_mounts, volume_devices, liveness_probe, readiness_probe, startup_probe, lifecycle, termination_message_path, termination_message_policy, image_pull_policy, security_context, stdin, stdin_once, tty };
    k8s_pb::api::core::v1::EphemeralVolumeSource { volume_claim_template };
    k8s_pb::api::core::v1::Event { metadata, involved_object, reason, message, source, first_timestamp, last_timestamp, count, r#type, event_time, series, action, related, reporting_component, reporting_instance };
    k8s_pb::api::core::v1::EventSeries { count, last_observed_time };
    k8s_pb::api::core::v1::EventSource { component, host };
    k8s_pb::api::core::v1::ExecAction { command };
    k8s_pb::api::core::v1::FcVolumeSource { target_ww_ns, lun, fs_type, read_only, wwids };
    k8s_pb::api::core::v1::FileKeySelector { volume_name, path, key, optional };
    k8s_pb::api::core::v1::FlexPersistentVolumeSource { driver, fs_type, secret_ref, read_only, options };
    k8s_pb::api::core::v1::FlexVolumeSource { driver, fs_type, secret_ref, read_only, options };
    k8s_pb::api::core::v1::FlockerVolumeSource { dataset_name, dataset_uuid };
    k8s_pb::api::core::v1::GcePersistentDiskVolumeSource { pd_name, fs_type, partition, read_only };
    k8s_pb::api::core::v1::GrpcAction { port, service };
    k8s_pb::api::core::v1::GitRepoVolumeSource { repository, revision, directory };
    k8s_pb::api::core::v1::GlusterfsPersistentVolumeSource { endpoints, path, read_only, endpoints_namespace };
    k8s_pb::api::core::v1::GlusterfsVolumeSource { endpoints, path, read_only };
    k8s_pb::api::core::v1::HttpGetAction { path, port, host, scheme, http_headers };
    k8s_pb::api::core::v1::HttpHeader { name, value };
    k8s_pb::api::core::v1::HostAlias { ip, hostnames };
    k8s_pb::api::core::v1::HostIp { ip };
    k8s_pb::api::core::v1::HostPathVolumeSource { path, r#type };
    k8s_pb::api::core::v1::IscsiPersistentVolumeSource { target_portal, iqn, lun, iscsi_interface, fs_type, read_only, portals, chap_auth_discovery, chap_auth_session, secret_ref, initiator_name };
    k8s_pb::api::core::v1::IscsiVolumeSource { target_portal, iqn, lun, iscsi_interface, fs_type, read_only, portals, chap_auth_discovery, chap_auth_session, secret_ref, initiator_name };
    k8s_pb::api::core::v1::ImageVolumeSource { reference, pull_policy };
    k8s_pb::api::core::v1::KeyToPath { key, path, mode };
    k8s_pb::api::core::v1::Lifecycle { post_start, pre_stop, stop_signal };
    k8s_pb::api::core::v1::LifecycleHandler { exec, http_get, tcp_socket, sleep };
    k8s_pb::api::core::v1::LimitRange { metadata, spec };
    k8s_pb::api::core::v1::LimitRangeItem { r#type, max, min, default, default_request, max_limit_request_ratio };
    k8s_pb::api::core::v1::LimitRangeSpec { limits };
    k8s_pb::api::core::v1::LinuxContainerUser { uid, gid, supplemental_groups };
    k8s_pb::api::core::v1::LoadBalancerIngress { ip, hostname, ip_mode, ports };
    k8s_pb::api::core::v1::LoadBalancerStatus { ingress };
    k8s_pb::api::core::v1::LocalObjectReference { name };
    k8s_pb::api::core::v1::LocalVolumeSource { path, fs_type };
    k8s_pb::api::core::v1::ModifyVolumeStatus { target_volume_attributes_class_name, status };
    k8s_pb::api::core::v1::NfsVolumeSource { server, path, read_only };
    k8s_pb::api::core::v1::Namespace { metadata, spec, status };
    k8s_pb::api::core::v1::NamespaceCondition { r#type, status, last_transition_time, reason, message };
    k8s_pb::api::core::v1::NamespaceSpec { finalizers };
    k8s_pb::api::core::v1::NamespaceStatus { phase, conditions };
    k8s_pb::api::core::v1::Node { metadata, spec, status };
    k8s_pb::api::core::v1::NodeAddress { r#type, address };
    k8s_pb::api::core::v1::NodeAffinity { required_during_scheduling_ignored_during_execution, preferred_during_scheduling_ignored_during_execution };
    k8s_pb::api::core::v1::NodeCondition { r#type, status, last_heartbeat_time, last_transition_time, reason, message };
    k8s_pb::api::core::v1::NodeConfigSource { config_map };
    k8s_pb::api::core::v1::NodeConfigStatus { assigned, active, last_known_good, error };
    k8s_pb::api::core::v1::NodeDaemonEndpoints { kubelet_endpoint };
    k8s_pb::api::core::v1::NodeFeatures { supplemental_groups_policy };
    k8s_pb::api::core::v1::NodeProxyOptions { path };
    k8s_pb::api::core::v1::NodeRuntimeHandler { name, features };
    k8s_pb::api::core::v1::NodeRuntimeHandlerFeatures { recursive_read_only_mounts, user_namespaces };
    k8s_pb::api::core::v1::NodeSelector { node_selector_terms };
    k8s_pb::api::core::v1::NodeSelectorRequirement { key, operator, values };
    k8s_pb::api::core::v1::NodeSelectorTerm { match_expressions, match_fields };
    k8s_pb::api::core::v1::NodeSpec { pod_cidr, pod_cid_rs, provider_id, unschedulable, taints, config_source, external_id };
    k8s_pb::api::core::v1::NodeStatus { capacity, allocatable, phase, conditions, addresses, daemon_endpoints, node_info, images, volumes_in_use, volumes_attached, config, runtime_handlers, features, declared_features };
    k8s_pb::api::core::v1::NodeSwapStatus { capacity };
    k8s_pb::api::core::v1::NodeSystemInfo { machine_id, system_uuid, boot_id, kernel_version, os_image, container_runtime_version, kubelet_version, kube_proxy_version, operating_system, architecture, swap };
    k8s_pb::api::core::v1::ObjectFieldSelector { api_version, field_path };
    k8s_pb::api::core::v1::ObjectReference { kind, namespace, name, uid, api_version, resource_version, field_path };
    k8s_pb::api::core::v1::PersistentVolume { metadata, spec, status };
    k8s_pb::api::core::v1::PersistentVolumeClaim { metadata, spec, status };
    k8s_pb::api::core::v1::PersistentVolumeClaimCondition { r#type, status, last_probe_time, last_transition_time, reason, message };
    k8s_pb::api::core::v1::PersistentVolumeClaimSpec { access_modes, selector, resources, volume_name, storage_class_name, volume_mode, data_source, data_source_ref, volume_attributes_class_name };
    k8s_pb::api::core::v1::PersistentVolumeClaimStatus { phase, access_modes, capacity, conditions, allocated_resources, allocated_resource_statuses, current_volume_attributes_class_name, modify_volume_status };
    k8s_pb::api::core::v1::PersistentVolumeClaimTemplate { metadata, spec };
    k8s_pb::api::core::v1::PersistentVolumeClaimVolumeSource { claim_name, read_only };
    k8s_pb::api::core::v1::PersistentVolumeSource { gce_persistent_disk, aws_elastic_block_store, host_path, glusterfs, nfs, rbd, iscsi, cinder, cephfs, fc, flocker, flex_volume, azure_file, vsphere_volume, quobyte, azure_disk, photon_persistent_disk, portworx_volume, scale_io, local, storageos, csi };
    k8s_pb::api::core::v1::PersistentVolumeSpec { capacity, persistent_volume_source, access_modes, claim_ref, persistent_volume_reclaim_policy, storage_class_name, mount_options, volume_mode, node_affinity, volume_attributes_class_name };
    k8s_pb::api::core::v1::PersistentVolumeStatus { phase, message, reason, last_phase_transition_time };
    k8s_pb::api::core::v1::PhotonPersistentDiskVolumeSource { pd_id, fs_type };
    k8s_pb::api::core::v1::Pod { metadata, spec, status };
    k8s_pb::api::core::v1::PodAffinity { required_during_scheduling_ignored_during_execution, preferred_during_scheduling_ignored_during_execution };
    k8s_pb::api::core::v1::PodAffinityTerm { label_selector, namespaces, topology_key, namespace_selector, match_label_keys, mismatch_label_keys };
    k8s_pb::api::core::v1::PodAntiAffinity { required_during_scheduling_ignored_during_execution, preferred_during_scheduling_ignored_during_execution };
    k8s_pb::api::core::v1::PodAttachOptions { stdin, stdout, stderr, tty, container };
    k8s_pb::api::core::v1::PodCertificateProjection { signer_name, key_type, max_expiration_seconds, credential_bundle_path, key_path, certificate_chain_path, user_annotations };
    k8s_pb::api::core::v1::PodCondition { r#type, observed_generation, status, last_probe_time, last_transition_time, reason, message };
    k8s_pb::api::core::v1::PodDnsConfig { nameservers, searches, options };
    k8s_pb::api::core::v1::PodDnsConfigOption { name, value };
    k8s_pb::api::core::v1::PodExecOptions { stdin, stdout, stderr, tty, container, command };
    k8s_pb::api::core::v1::PodExtendedResourceClaimStatus { request_mappings, resource_claim_name };
    k8s_pb::api::core::v1::PodIp { ip };
    k8s_pb::api::core::v1::PodLogOptions { container, follow, previous, since_seconds, since_time, timestamps, tail_lines, limit_bytes, insecure_skip_tls_verify_backend, stream };
    k8s_pb::api::core::v1::PodOs { name };
    k8s_pb::api::core::v1::PodPortForwardOptions { ports };
    k8s_pb::api::core::v1::PodProxyOptions { path };
    k8s_pb::api::core::v1::PodReadinessGate { condition_type };
    k8s_pb::api::core::v1::PodResourceClaim { name, resource_claim_name, resource_claim_template_name };
    k8s_pb::api::core::v1::PodResourceClaimStatus { name, resource_claim_name };
    k8s_pb::api::core::v1::PodSchedulingGate { name };
    k8s_pb::api::core::v1::PodSecurityContext { se_linux_options, windows_options, run_as_user, run_as_group, run_as_non_root, supplemental_groups, supplemental_groups_policy, fs_group, sysctls, fs_group_change_policy, seccomp_profile, app_armor_profile, se_linux_change_policy };
    k8s_pb::api::core::v1::PodSignature { pod_controller };
    k8s_pb::api::core::v1::PodSpec { volumes, init_containers, containers, ephemeral_containers, restart_policy, termination_grace_period_seconds, active_deadline_seconds, dns_policy, node_selector, service_account_name, service_account, automount_service_account_token, node_name, host_network, host_pid, host_ipc, share_process_namespace, security_context, image_pull_secrets, hostname, subdomain, affinity, scheduler_name, tolerations, host_aliases, priority_class_name, priority, dns_config, readiness_gates, runtime_class_name, enable_service_links, preemption_policy, overhead, topology_spread_constraints, set_hostname_as_fqdn, os, host_users, scheduling_gates, resource_claims, resources, hostname_override, workload_ref };
    k8s_pb::api::core::v1::PodStatus { observed_generation, phase, conditions, message, reason, nominated_node_name, host_ip, host_ips, pod_ip, pod_ips, start_time, init_container_statuses, container_statuses, qos_class, ephemeral_container_statuses, resize, resource_claim_statuses, extended_resource_claim_status, allocated_resources, resources };
    k8s_pb::api::core::v1::PodStatusResult { metadata, status };
    k8s_pb::api::core::v1::PodTemplate { metadata, template };
    k8s_pb::api::core::v1::PodTemplateSpec { metadata, spec };
    k8s_pb::api::core::v1::PortStatus { port, protocol, error };
    k8s_pb::api::core::v1::PortworxVolumeSource { volume_id, fs_type, read_only };
    k8s_pb::api::core::v1::Preconditions { uid };
    k8s_pb::api::core::v1::PreferAvoidPodsEntry { pod_signature, eviction_time, reason, message };
    k8s_pb::api::core::v1::PreferredSchedulingTerm { weight, preference };
    k8s_pb::api::core::v1::Probe { handler, initial_delay_seconds, timeout_seconds, period_seconds, success_threshold, failure_threshold, termination_grace_period_seconds };
    k8s_pb::api::core::v1::ProbeHandler { exec, http_get, tcp_socket, grpc };
    k8s_pb::api::core::v1::ProjectedVolumeSource { sources, default_mode };
    k8s_pb::api::core::v1::QuobyteVolumeSource { registry, volume, read_only, user, group, tenant };
    k8s_pb::api::core::v1::RbdPersistentVolumeSource { monitors, image, fs_type, pool, user, keyring, secret_ref, read_only };
    k8s_pb::api::core::v1::RbdVolumeSource { monitors, image, fs_type, pool, user, keyring, secret_ref, read_only };
    k8s_pb::api::core::v1::RangeAllocation { metadata, range, data = bytes };
    k8s_pb::api::core::v1::ReplicationController { metadata, spec, status };
    k8s_pb::api::core::v1::ReplicationControllerCondition { r#type, status, last_transition_time, reason, message };
    k8s_pb::api::core::v1::ReplicationControllerSpec { replicas, min_ready_seconds, selector, template };
    k8s_pb::api::core::v1::ReplicationControllerStatus { replicas, fully_labeled_replicas, ready_replicas, available_replicas, observed_generation, conditions };
    k8s_pb::api::core::v1::ResourceClaim { name, request };
    k8s_pb::api::core::v1::ResourceFieldSelector { container_name, resource, divisor };
    k8s_pb::api::core::v1::ResourceHealth { resource_id, health };
    k8s_pb::api::core::v1::ResourceQuota { metadata, spec, status };
    k8s_pb::api::core::v1::ResourceQuotaSpec { hard, scopes, scope_selector };
    k8s_pb::api::core::v1::ResourceQuotaStatus { hard, used };
    k8s_pb::api::core::v1::ResourceRequirements { limits, requests, claims };
    k8s_pb::api::core::v1::ResourceStatus { name, resources };
    k8s_pb::api::core::v1::SeLinuxOptions { user, role, r#type, level };
    k8s_pb::api::core::v1::ScaleIoPersistentVolumeSource { gateway, system, secret_ref, ssl_enabled, protection_domain, storage_pool, storage_mode, volume_name, fs_type, read_only };
    k8s_pb::api::core::v1::ScaleIoVolumeSource { gateway, system, secret_ref, ssl_enabled, protection_domain, storage_pool, storage_mode, volume_name, fs_type, read_only };
    k8s_pb::api::core::v1::ScopeSelector { match_expressions };
    k8s_pb::api::core::v1::ScopedResourceSelectorRequirement { scope_name, operator, values };
    k8s_pb::api::core::v1::SeccompProfile { r#type, localhost_profile };
    k8s_pb::api::core::v1::Secret { metadata, immutable, data = bytes_map, string_data, r#type };
    k8s_pb::api::core::v1::SecretEnvSource { local_object_reference, optional };
    k8s_pb::api::core::v1::SecretKeySelector { local_object_reference, key, optional };
    k8s_pb::api::core::v1::SecretProjection { local_object_reference, items, optional };
    k8s_pb::api::core::v1::SecretReference { name, namespace };
    k8s_pb::api::core::v1::SecretVolumeSource { secret_name, items, default_mode, optional };
    k8s_pb::api::core::v1::SecurityContext { capabilities, privileged, se_linux_options, windows_options, run_as_user, run_as_group, run_as_non_root, read_only_root_filesystem, allow_privilege_escalation, proc_mount, seccomp_profile, app_armor_profile };
    k8s_pb::api::core::v1::SerializedReference { reference };
    k8s_pb::api::core::v1::Service { metadata, spec, status };
    k8s_pb::api::core::v1::ServiceAccount { metadata, secrets, image_pull_secrets, automount_service_account_token };
    k8s_pb::api::core::v1::ServiceAccountTokenProjection { audience, expiration_seconds, path };
    k8s_pb::api::core::v1::ServicePort { name, protocol, app_protocol, port, target_port, node_port };
    k8s_pb::api::core::v1::ServiceProxyOptions { path };
    k8s_pb::api::core::v1::ServiceSpec { ports, selector, cluster_ip, cluster_ips, r#type, external_ips, session_affinity, load_balancer_ip, load_balancer_source_ranges, external_name, external_traffic_policy, health_check_node_port, publish_not_ready_addresses, session_affinity_config, ip_families, ip_family_policy, allocate_load_balancer_node_ports, load_balancer_class, internal_traffic_policy, traffic_distribution };
    k8s_pb::api::core::v1::ServiceStatus { load_balancer, conditions };
    k8s_pb::api::core::v1::SessionAffinityConfig { client_ip };
    k8s_pb::api::core::v1::SleepAction { seconds };
    k8s_pb::api::core::v1::StorageOsPersistentVolumeSource { volume_name, volume_namespace, fs_type, read_only, secret_ref };
    k8s_pb::api::core::v1::StorageOsVolumeSource { volume_name, volume_namespace, fs_type, read_only, secret_ref };
    k8s_pb::api::core::v1::Sysctl { name, value };
    k8s_pb::api::core::v1::TcpSocketAction { port, host };
    k8s_pb::api::core::v1::Taint { key, value, effect, time_added };
    k8s_pb::api::core::v1::Toleration { key, operator, value, effect, toleration_seconds };
    k8s_pb::api::core::v1::TopologySelectorLabelRequirement { key, values };
    k8s_pb::api::core::v1::TopologySelectorTerm { match_label_expressions };
    k8s_pb::api::core::v1::TopologySpreadConstraint { max_skew, topology_key, when_unsatisfiable, label_selector, min_domains, node_affinity_policy, node_taints_policy, match_label_keys };
    k8s_pb::api::core::v1::TypedLocalObjectReference { api_group, kind, name };
    k8s_pb::api::core::v1::TypedObjectReference { api_group, kind, name, namespace };
    k8s_pb::api::core::v1::Volume { name, volume_source };
    k8s_pb::api::core::v1::VolumeDevice { name, device_path };
    k8s_pb::api::core::v1::VolumeMount { name, read_only, recursive_read_only, mount_path, sub_path, mount_propagation, sub_path_expr };
    k8s_pb::api::core::v1::VolumeMountStatus { name, mount_path, read_only, recursive_read_only };
    k8s_pb::api::core::v1::VolumeNodeAffinity { required };
    k8s_pb::api::core::v1::VolumeProjection { secret, downward_api, config_map, service_account_token, cluster_trust_bundle, pod_certificate };
    k8s_pb::api::core::v1::VolumeResourceRequirements { limits, requests };
    k8s_pb::api::core::v1::VolumeSource { host_path, empty_dir, gce_persistent_disk, aws_elastic_block_store, git_repo, secret, nfs, iscsi, glusterfs, persistent_volume_claim, rbd, flex_volume, cinder, cephfs, flocker, downward_api, fc, azure_file, config_map, vsphere_volume, quobyte, azure_disk, photon_persistent_disk, projected, portworx_volume, scale_io, storageos, csi, ephemeral, image };
    k8s_pb::api::core::v1::VsphereVirtualDiskVolumeSource { volume_path, fs_type, storage_policy_name, storage_policy_id };
    k8s_pb::api::core::v1::WeightedPodAffinityTerm { weight, pod_affinity_term };
    k8s_pb::api::core::v1::WindowsSecurityContextOptions { gmsa_credential_spec_name, gmsa_credential_spec, run_as_user_name, host_process };
    k8s_pb::api::core::v1::WorkloadReference { name, pod_group, pod_group_replica_key };
    k8s_pb::api::apps::v1::ControllerRevision { metadata, data, revision };
    k8s_pb::api::apps::v1::DaemonSet { metadata, spec, status };
    k8s_pb::api::apps::v1::DaemonSetCondition { r#type, status, last_transition_time, reason, message };
    k8s_pb::api::apps::v1::DaemonSetSpec { selector, template, update_strategy, min_ready_seconds, revision_history_limit };
    k8s_pb::api::apps::v1::DaemonSetStatus { current_number_scheduled, number_misscheduled, desired_number_scheduled, number_ready, observed_generation, updated_number_scheduled, number_available, number_unavailable, collision_count, conditions };
    k8s_pb::api::apps::v1::DaemonSetUpdateStrategy { r#type, rolling_update };
    k8s_pb::api::apps::v1::Deployment { metadata, spec, status };
    k8s_pb::api::apps::v1::DeploymentCondition { r#type, status, last_update_time, last_transition_time, reason, message };
    k8s_pb::api::apps::v1::DeploymentSpec { replicas, selector, template, strategy, min_ready_seconds, revision_history_limit, paused, progress_deadline_seconds };
    k8s_pb::api::apps::v1::DeploymentStatus { observed_generation, replicas, updated_replicas, ready_replicas, available_replicas, unavailable_replicas, terminating_replicas, conditions, collision_count };
    k8s_pb::api::apps::v1::DeploymentStrategy { r#type, rolling_update };
    k8s_pb::api::apps::v1::ReplicaSet { metadata, spec, status };
    k8s_pb::api::apps::v1::ReplicaSetCondition { r#type, status, last_transition_time, reason, message };
    k8s_pb::api::apps::v1::ReplicaSetSpec { replicas, min_ready_seconds, selector, template };
    k8s_pb::api::apps::v1::ReplicaSetStatus { replicas, fully_labeled_replicas, ready_replicas, available_replicas, terminating_replicas, observed_generation, conditions };
    k8s_pb::api::apps::v1::RollingUpdateDaemonSet { max_unavailable, max_surge };
    k8s_pb::api::apps::v1::RollingUpdateDeployment { max_unavailable, max_surge };
    k8s_pb::api::apps::v1::RollingUpdateStatefulSetStrategy { partition, max_unavailable };
    k8s_pb::api::apps::v1::StatefulSet { metadata, spec, status };
    k8s_pb::api::apps::v1::StatefulSetCondition { r#type, status, last_transition_time, reason, message };
    k8s_pb::api::apps::v1::StatefulSetOrdinals { start };
    k8s_pb::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy { when_deleted, when_scaled };
    k8s_pb::api::apps::v1::StatefulSetSpec { replicas, selector, template, volume_claim_templates, service_name, pod_management_policy, update_strategy, revision_history_limit, min_ready_seconds, persistent_volume_claim_retention_policy, ordinals };
    k8s_pb::api::apps::v1::StatefulSetStatus { observed_generation, replicas, ready_replicas, current_replicas, updated_replicas, current_revision, update_revision, collision_count, conditions, available_replicas };
    k8s_pb::api::apps::v1::StatefulSetUpdateStrategy { r#type, rolling_update };
    k8s_pb::api::storage::v1::StorageClass { metadata, provisioner, parameters, reclaim_policy, mount_options, allow_volume_expansion, volume_binding_mode, allowed_topologies };
    k8s_pb::api::batch::v1::CronJob { metadata, spec, status };
    k8s_pb::api::batch::v1::CronJobSpec { schedule, time_zone, starting_deadline_seconds, concurrency_policy, suspend, job_template, successful_jobs_history_limit, failed_jobs_history_limit };
    k8s_pb::api::batch::v1::CronJobStatus { active, last_schedule_time, last_successful_time };
    k8s_pb::api::batch::v1::Job { metadata, spec, status };
    k8s_pb::api::batch::v1::JobCondition { r#type, status, last_probe_time, last_transition_time, reason, message };
    k8s_pb::api::batch::v1::JobSpec { parallelism, completions, active_deadline_seconds, pod_failure_policy, success_policy, backoff_limit, backoff_limit_per_index, max_failed_indexes, selector, manual_selector, template, ttl_seconds_after_finished, completion_mode, suspend, pod_replacement_policy, managed_by };
    k8s_pb::api::batch::v1::JobStatus { conditions, start_time, completion_time, active, succeeded, failed, terminating, completed_indexes, failed_indexes, uncounted_terminated_pods, ready };
    k8s_pb::api::batch::v1::JobTemplateSpec { metadata, spec };
    k8s_pb::api::batch::v1::PodFailurePolicy { rules };
    k8s_pb::api::batch::v1::PodFailurePolicyOnExitCodesRequirement { container_name, operator, values };
    k8s_pb::api::batch::v1::PodFailurePolicyOnPodConditionsPattern { r#type, status };
    k8s_pb::api::batch::v1::PodFailurePolicyRule { action, on_exit_codes, on_pod_conditions };
    k8s_pb::api::batch::v1::SuccessPolicy { rules };
    k8s_pb::api::batch::v1::SuccessPolicyRule { succeeded_indexes, succeeded_count };
    k8s_pb::api::batch::v1::UncountedTerminatedPods { succeeded, failed };
    k8s_pb::api::autoscaling::v2::ContainerResourceMetricSource { name, target, container };
    k8s_pb::api::autoscaling::v2::ContainerResourceMetricStatus { name, current, container };
    k8s_pb::api::autoscaling::v2::CrossVersionObjectReference { kind, name, api_version };
    k8s_pb::api::autoscaling::v2::ExternalMetricSource { metric, target };
    k8s_pb::api::autoscaling::v2::ExternalMetricStatus { metric, current };
    k8s_pb::api::autoscaling::v2::HpaScalingPolicy { r#type, value, period_seconds };
    k8s_pb::api::autoscaling::v2::HpaScalingRules { stabilization_window_seconds, select_policy, policies, tolerance };
    k8s_pb::api::autoscaling::v2::HorizontalPodAutoscaler { metadata, spec, status };
    k8s_pb::api::autoscaling::v2::HorizontalPodAutoscalerBehavior { scale_up, scale_down };
    k8s_pb::api::autoscaling::v2::HorizontalPodAutoscalerCondition { r#type, status, last_transition_time, reason, message };
    k8s_pb::api::autoscaling::v2::HorizontalPodAutoscalerSpec { scale_target_ref, min_replicas, max_replicas, metrics, behavior };
    k8s_pb::api::autoscaling::v2::HorizontalPodAutoscalerStatus { observed_generation, last_scale_time, current_replicas, desired_replicas, current_metrics, conditions };
    k8s_pb::api::autoscaling::v2::MetricIdentifier { name, selector };
    k8s_pb::api::autoscaling::v2::MetricSpec { r#type, object, pods, resource, container_resource, external };
    k8s_pb::api::autoscaling::v2::MetricStatus { r#type, object, pods, resource, container_resource, external };
    k8s_pb::api::autoscaling::v2::MetricTarget { r#type, value, average_value, average_utilization };
    k8s_pb::api::autoscaling::v2::MetricValueStatus { value, average_value, average_utilization };
    k8s_pb::api::autoscaling::v2::ObjectMetricSource { described_object, target, metric };
    k8s_pb::api::autoscaling::v2::ObjectMetricStatus { metric, current, described_object };
    k8s_pb::api::autoscaling::v2::PodsMetricSource { metric, target };
    k8s_pb::api::autoscaling::v2::PodsMetricStatus { metric, current };
    k8s_pb::api::autoscaling::v2::ResourceMetricSource { name, target };
    k8s_pb::api::autoscaling::v2::ResourceMetricStatus { name, current };
    k8s_pb::api::coordination::v1::Lease { metadata, spec };
    k8s_pb::api::coordination::v1::LeaseSpec { holder_identity, lease_duration_seconds, acquire_time, renew_time, lease_transitions, strategy, preferred_holder };
    k8s_pb::api::rbac::v1::AggregationRule { cluster_role_selectors };
    k8s_pb::api::rbac::v1::ClusterRole { metadata, rules, aggregation_rule };
    k8s_pb::api::rbac::v1::ClusterRoleBinding { metadata, subjects, role_ref };
    k8s_pb::api::rbac::v1::PolicyRule { verbs, api_groups, resources, resource_names, non_resource_ur_ls };
    k8s_pb::api::rbac::v1::Role { metadata, rules };
    k8s_pb::api::rbac::v1::RoleBinding { metadata, subjects, role_ref };
    k8s_pb::api::rbac::v1::RoleRef { api_group, kind, name };
    k8s_pb::api::rbac::v1::Subject { kind, api_group, name, namespace };
    k8s_pb::apimachinery::pkg::apis::meta::v1::Condition { r#type, status, observed_generation, last_transition_time, reason, message };
    k8s_pb::apimachinery::pkg::apis::meta::v1::LabelSelector { match_labels, match_expressions };
    k8s_pb::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement { key, operator, values };
    k8s_pb::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry { manager, operation, api_version, time, fields_type, fields_v1, subresource };
    k8s_pb::api::authorization::v1::ExtraValue { items };
    k8s_pb::api::authorization::v1::FieldSelectorAttributes { raw_selector, requirements };
    k8s_pb::api::authorization::v1::LabelSelectorAttributes { raw_selector, requirements };
    k8s_pb::api::authorization::v1::LocalSubjectAccessReview { metadata, spec, status };
    k8s_pb::api::authorization::v1::NonResourceAttributes { path, verb };
    k8s_pb::api::authorization::v1::NonResourceRule { verbs, non_resource_ur_ls };
    k8s_pb::api::authorization::v1::ResourceAttributes { namespace, verb, group, version, resource, subresource, name, field_selector, label_selector };
    k8s_pb::api::authorization::v1::ResourceRule { verbs, api_groups, resources, resource_names };
    k8s_pb::api::authorization::v1::SelfSubjectAccessReview { metadata, spec, status };
    k8s_pb::api::authorization::v1::SelfSubjectAccessReviewSpec { resource_attributes, non_resource_attributes };
    k8s_pb::api::authorization::v1::SelfSubjectRulesReview { metadata, spec, status };
    k8s_pb::api::authorization::v1::SelfSubjectRulesReviewSpec { namespace };
    k8s_pb::api::authorization::v1::SubjectAccessReview { metadata, spec, status };
    k8s_pb::api::authorization::v1::SubjectAccessReviewSpec { resource_attributes, non_resource_attributes, user, groups, extra, uid };
    k8s_pb::api::authorization::v1::SubjectAccessReviewStatus { allowed, denied, reason, evaluation_error };
    k8s_pb::api::authorization::v1::SubjectRulesReviewStatus { resource_rules, non_resource_rules, incomplete, evaluation_error };
    k8s_pb::api::authentication::v1::BoundObjectReference { kind, api_version, name, u_id };
    k8s_pb::api::authentication::v1::ExtraValue { items };
    k8s_pb::api::authentication::v1::SelfSubjectReview { metadata, status };
    k8s_pb::api::authentication::v1::SelfSubjectReviewStatus { user_info };
    k8s_pb::api::authentication::v1::TokenRequest { metadata, spec, status };
    k8s_pb::api::authentication::v1::TokenRequestSpec { audiences, expiration_seconds, bound_object_ref };
    k8s_pb::api::authentication::v1::TokenRequestStatus { token, expiration_timestamp };
    k8s_pb::api::authentication::v1::TokenReview { metadata, spec, status };
    k8s_pb::api::authentication::v1::TokenReviewSpec { token, audiences };
    k8s_pb::api::authentication::v1::TokenReviewStatus { authenticated, user, audiences, error };
    k8s_pb::api::authentication::v1::UserInfo { username, uid, groups, extra };
    k8s_pb::apimachinery::pkg::apis::meta::v1::FieldSelectorRequirement { key, operator, values };
    k8s_pb::api::policy::v1::Eviction { metadata, delete_options };
    k8s_pb::api::policy::v1::PodDisruptionBudget { metadata, spec, status };
    k8s_pb::api::scheduling::v1::PriorityClass { metadata, value, global_default, description, preemption_policy };
    k8s_pb::api::networking::v1::Ingress { metadata, spec, status };
    k8s_pb::api::networking::v1::IngressSpec { ingress_class_name, default_backend, tls, rules };
    k8s_pb::api::networking::v1::IngressBackend { service, resource };
    k8s_pb::api::networking::v1::IngressServiceBackend { name, port };
    k8s_pb::api::networking::v1::ServiceBackendPort { name, number };
    k8s_pb::api::networking::v1::IngressTls { hosts, secret_name };
    k8s_pb::api::networking::v1::IngressRule { host, ingress_rule_value };
    k8s_pb::api::networking::v1::IngressRuleValue { http };
    k8s_pb::api::networking::v1::HttpIngressRuleValue { paths };
    k8s_pb::api::networking::v1::HttpIngressPath { path, path_type, backend };
    k8s_pb::api::networking::v1::IngressStatus { load_balancer };
    k8s_pb::api::networking::v1::IngressLoadBalancerStatus { ingress };
    k8s_pb::api::networking::v1::IngressLoadBalancerIngress { ip, hostname, ports };
    k8s_pb::api::networking::v1::IngressPortStatus { port, protocol, error };
    k8s_pb::api::networking::v1::IngressClass { metadata, spec };
    k8s_pb::api::networking::v1::IngressClassSpec { controller, parameters };
    k8s_pb::api::networking::v1::IngressClassParametersReference { a_pi_group, kind, name, scope, namespace };
    k8s_pb::api::networking::v1::NetworkPolicy { metadata, spec };
    k8s_pb::api::networking::v1::NetworkPolicySpec { pod_selector, ingress, egress, policy_types };
    k8s_pb::api::networking::v1::NetworkPolicyIngressRule { ports, from };
    k8s_pb::api::networking::v1::NetworkPolicyEgressRule { ports, to };
    k8s_pb::api::networking::v1::NetworkPolicyPeer { pod_selector, namespace_selector, ip_block };
    k8s_pb::api::networking::v1::IpBlock { cidr, except };
    k8s_pb::api::networking::v1::NetworkPolicyPort { protocol, port, end_port };
    k8s_pb::api::policy::v1::PodDisruptionBudgetSpec { min_available, selector, max_unavailable, unhealthy_pod_eviction_policy };
    k8s_pb::api::policy::v1::PodDisruptionBudgetStatus { observed_generation, disrupted_pods, disruptions_allowed, current_healthy, desired_healthy, expected_pods, conditions };
    k8s_pb::apimachinery::pkg::apis::meta::v1::DeleteOptions { grace_period_seconds, preconditions, orphan_dependents, propagation_policy, dry_run };
    k8s_pb::apimachinery::pkg::apis::meta::v1::Preconditions { uid, resource_version };
    k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta { name, generate_name, namespace, self_link, uid, resource_version, generation, creation_timestamp, deletion_timestamp, deletion_grace_period_seconds, labels, annotations, owner_references, finalizers, managed_fields };
    k8s_pb::apimachinery::pkg::apis::meta::v1::OwnerReference { api_version, kind, name, uid, controller, block_owner_deletion };
    }
}

/// Decodes `raw` as `M` and writes it as JSON.
fn message<M: prost::Message + Default + ToJson>(raw: &[u8]) -> Result<Value, String> {
    M::decode(raw)
        .map(|m| m.to_json())
        .map_err(|e| format!("the protobuf body does not decode: {e}"))
}

macro_rules! kinds {
    ($($api_version:literal $kind:literal => $ty:path,)*) => {
        /// The message of a kind Skiff serves, as JSON.
        fn kind(api_version: &str, kind: &str, raw: &[u8]) -> Result<Value, String> {
            let mut value = match (api_version, kind) {
                $( ($api_version, $kind) => message::<$ty>(raw)?, )*
                _ => {
                    return Err(format!(
                        "{kind} in {api_version} is not a kind Skiff reads as protobuf"
                    ));
                }
            };
            if let Some(map) = value.as_object_mut() {
                map.insert("apiVersion".into(), api_version.into());
                map.insert("kind".into(), kind.into());
            }
            Ok(value)
        }
    };
}

kinds! {
    "v1" "Namespace" => k8s_pb::api::core::v1::Namespace,
    "v1" "Node" => k8s_pb::api::core::v1::Node,
    "v1" "Pod" => k8s_pb::api::core::v1::Pod,
    "v1" "ReplicationController" => k8s_pb::api::core::v1::ReplicationController,
    "v1" "Service" => k8s_pb::api::core::v1::Service,
    "v1" "Endpoints" => k8s_pb::api::core::v1::Endpoints,
    "v1" "Event" => k8s_pb::api::core::v1::Event,
    "v1" "Secret" => k8s_pb::api::core::v1::Secret,
    "v1" "ConfigMap" => k8s_pb::api::core::v1::ConfigMap,
    "v1" "ServiceAccount" => k8s_pb::api::core::v1::ServiceAccount,
    "v1" "Binding" => k8s_pb::api::core::v1::Binding,
    "v1" "PersistentVolume" => k8s_pb::api::core::v1::PersistentVolume,
    "v1" "PersistentVolumeClaim" => k8s_pb::api::core::v1::PersistentVolumeClaim,
    "v1" "ResourceQuota" => k8s_pb::api::core::v1::ResourceQuota,
    "v1" "LimitRange" => k8s_pb::api::core::v1::LimitRange,
    "storage.k8s.io/v1" "StorageClass" => k8s_pb::api::storage::v1::StorageClass,
    "policy/v1" "Eviction" => k8s_pb::api::policy::v1::Eviction,
    "policy/v1" "PodDisruptionBudget" => k8s_pb::api::policy::v1::PodDisruptionBudget,
    "scheduling.k8s.io/v1" "PriorityClass" => k8s_pb::api::scheduling::v1::PriorityClass,
    "networking.k8s.io/v1" "Ingress" => k8s_pb::api::networking::v1::Ingress,
    "networking.k8s.io/v1" "IngressClass" => k8s_pb::api::networking::v1::IngressClass,
    "networking.k8s.io/v1" "NetworkPolicy" => k8s_pb::api::networking::v1::NetworkPolicy,
    "v1" "DeleteOptions" => k8s_pb::apimachinery::pkg::apis::meta::v1::DeleteOptions,
    "meta.k8s.io/v1" "DeleteOptions" => k8s_pb::apimachinery::pkg::apis::meta::v1::DeleteOptions,
    "apps/v1" "ReplicaSet" => k8s_pb::api::apps::v1::ReplicaSet,
    "apps/v1" "Deployment" => k8s_pb::api::apps::v1::Deployment,
    "apps/v1" "DaemonSet" => k8s_pb::api::apps::v1::DaemonSet,
    "apps/v1" "StatefulSet" => k8s_pb::api::apps::v1::StatefulSet,
    "coordination.k8s.io/v1" "Lease" => k8s_pb::api::coordination::v1::Lease,
    "rbac.authorization.k8s.io/v1" "Role" => k8s_pb::api::rbac::v1::Role,
    "rbac.authorization.k8s.io/v1" "ClusterRole" => k8s_pb::api::rbac::v1::ClusterRole,
    "rbac.authorization.k8s.io/v1" "RoleBinding" => k8s_pb::api::rbac::v1::RoleBinding,
    "rbac.authorization.k8s.io/v1" "ClusterRoleBinding" => k8s_pb::api::rbac::v1::ClusterRoleBinding,
    "batch/v1" "Job" => k8s_pb::api::batch::v1::Job,
    "batch/v1" "CronJob" => k8s_pb::api::batch::v1::CronJob,
    "autoscaling/v2" "HorizontalPodAutoscaler" => k8s_pb::api::autoscaling::v2::HorizontalPodAutoscaler,
    "authorization.k8s.io/v1" "SelfSubjectAccessReview" => k8s_pb::api::authorization::v1::SelfSubjectAccessReview,
    "authorization.k8s.io/v1" "SelfSubjectRulesReview" => k8s_pb::api::authorization::v1::SelfSubjectRulesReview,
    "authentication.k8s.io/v1" "SelfSubjectReview" => k8s_pb::api::authentication::v1::SelfSubjectReview,
    "authentication.k8s.io/v1" "TokenRequest" => k8s_pb::api::authentication::v1::TokenRequest,
}

/// A protobuf request body (`k8s\0` + runtime.Unknown) as JSON.
///
/// # Errors
/// A body that is not the envelope, an encoding Skiff does not read, or
/// a kind it does not serve.
pub fn to_json(body: &[u8]) -> Result<Value, String> {
    let Some(envelope) = body.strip_prefix(MAGIC) else {
        return Err("a protobuf body starts with \"k8s\\x00\"".into());
    };
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(envelope)
        .map_err(|e| format!("the protobuf envelope does not decode: {e}"))?;
    if unknown
        .content_encoding
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        return Err("compressed protobuf bodies are not read".into());
    }
    let type_meta = unknown.type_meta.unwrap_or_default();
    kind(
        type_meta.api_version.as_deref().unwrap_or(""),
        type_meta.kind.as_deref().unwrap_or(""),
        unknown.raw.as_deref().unwrap_or(&[]),
    )
}

#[cfg(test)]
mod tests;
