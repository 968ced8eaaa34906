//! Validation of a pod's containers: name, image, termination message,
//! ports and their protocols, environment, volume mounts, resources,
//! lifecycle handlers and probes.

use skiff::pb::core::v1::Container;
use skiff::quantity::Quantity;
use skiff::validation::{self, FieldErrors};

use super::volumes::validate_local_path;

/// A container's lifecycle handlers and probes, as Kubernetes validates
/// them: exactly one handler each, a command to run, a port, a known
/// scheme; none of them on an init container (Skiff has no sidecars); a
/// probe's own grace period positive, and never on a readiness probe.
pub(super) fn validate_hooks_and_probes(
    path: &str,
    c: &Container,
    init: bool,
    errors: &mut FieldErrors,
) {
    use skiff::pb::core::v1::{ExecAction, HttpGetAction};
    let handler = |hpath: String,
                   exec: Option<&ExecAction>,
                   http: Option<&HttpGetAction>,
                   others: usize,
                   errors: &mut FieldErrors| {
        let count = usize::from(exec.is_some()) + usize::from(http.is_some()) + others;
        if count == 0 {
            errors.push(hpath.clone(), "Required value: must specify a handler type");
        } else if count > 1 {
            errors.forbidden(hpath.clone(), "may not specify more than 1 handler type");
        }
        if exec.is_some_and(|e| e.command.is_empty()) {
            errors.required(format!("{hpath}.exec.command"));
        }
        if let Some(http) = http {
            match http.port.as_ref().and_then(|p| p.kind.as_ref()) {
                Some(skiff::wkt::value::Kind::NumberValue(n))
                    if validation::is_valid_port_num(*n as i32).is_ok() && n.fract() == 0.0 => {}
                Some(skiff::wkt::value::Kind::StringValue(name))
                    if validation::is_port_name(name).is_ok() => {}
                _ => errors.push(
                    format!("{hpath}.httpGet.port"),
                    "Invalid value: must be a port number between 1 and 65535 or a port name",
                ),
            }
            if !matches!(http.scheme.as_str(), "" | "HTTP" | "HTTPS") {
                errors.not_supported(
                    format!("{hpath}.httpGet.scheme"),
                    &http.scheme,
                    &["HTTP", "HTTPS"],
                );
            }
        }
    };
    if let Some(lifecycle) = &c.lifecycle {
        if init && (lifecycle.post_start.is_some() || lifecycle.pre_stop.is_some()) {
            errors.forbidden(
                format!("{path}.lifecycle"),
                "may not be set for init containers without restartPolicy=Always",
            );
        }
        for (name, h) in [
            ("postStart", &lifecycle.post_start),
            ("preStop", &lifecycle.pre_stop),
        ] {
            let Some(h) = h else { continue };
            let others = usize::from(h.tcp_socket.is_some()) + usize::from(h.sleep.is_some());
            handler(
                format!("{path}.lifecycle.{name}"),
                h.exec.as_ref(),
                h.http_get.as_ref(),
                others,
                errors,
            );
            if h.sleep.as_ref().is_some_and(|s| s.seconds < 0) {
                errors.invalid(
                    format!("{path}.lifecycle.{name}.sleep.seconds"),
                    h.sleep.as_ref().map_or(0, |s| s.seconds),
                    "must be greater than or equal to 0",
                );
            }
        }
    }
    for (name, probe) in [
        ("livenessProbe", &c.liveness_probe),
        ("readinessProbe", &c.readiness_probe),
        ("startupProbe", &c.startup_probe),
    ] {
        let Some(probe) = probe else { continue };
        let ppath = format!("{path}.{name}");
        if init {
            errors.forbidden(
                ppath.clone(),
                "may not be set for init containers without restartPolicy=Always",
            );
        }
        let others = usize::from(probe.tcp_socket.is_some()) + usize::from(probe.grpc.is_some());
        handler(
            ppath.clone(),
            probe.exec.as_ref(),
            probe.http_get.as_ref(),
            others,
            errors,
        );
        if let Some(grace) = probe.termination_grace_period_seconds {
            if name == "readinessProbe" {
                errors.invalid(
                    format!("{ppath}.terminationGracePeriodSeconds"),
                    grace,
                    "must not be set for readinessProbes",
                );
            } else if grace <= 0 {
                errors.invalid(
                    format!("{ppath}.terminationGracePeriodSeconds"),
                    grace,
                    "must be greater than 0",
                );
            }
        }
    }
}

pub(super) fn validate_container(
    path: &str,
    c: &Container,
    volumes: &std::collections::HashSet<&str>,
    errors: &mut FieldErrors,
) {
    if c.name.is_empty() {
        errors.required(format!("{path}.name"));
    } else if let Err(reason) = validation::is_dns1123_label(&c.name) {
        errors.invalid(format!("{path}.name"), &c.name, &reason);
    }
    if c.image.trim().is_empty() {
        errors.required(format!("{path}.image"));
    }
    if !matches!(
        c.termination_message_policy.as_str(),
        "" | "File" | "FallbackToLogsOnError"
    ) {
        errors.not_supported(
            format!("{path}.terminationMessagePolicy"),
            &c.termination_message_policy,
            &["File", "FallbackToLogsOnError"],
        );
    }
    if !c.termination_message_path.is_empty() && !c.termination_message_path.starts_with('/') {
        errors.invalid(
            format!("{path}.terminationMessagePath"),
            &c.termination_message_path,
            "must be an absolute path",
        );
    }
    for (i, p) in c.ports.iter().enumerate() {
        let ppath = || format!("{path}.ports[{i}]");
        if validation::is_valid_port_num(p.container_port).is_err() {
            errors.invalid(
                format!("{}.containerPort", ppath()),
                p.container_port.to_string(),
                "must be between 1 and 65535, inclusive",
            );
        }
        if p.host_port != 0 && validation::is_valid_port_num(p.host_port).is_err() {
            errors.invalid(
                format!("{}.hostPort", ppath()),
                p.host_port.to_string(),
                "must be between 1 and 65535, inclusive",
            );
        }
        if !p.name.is_empty()
            && let Err(reason) = validation::is_port_name(&p.name)
        {
            errors.invalid(format!("{}.name", ppath()), &p.name, &reason);
        }
        validate_protocol(|| format!("{}.protocol", ppath()), &p.protocol, errors);
    }
    for (i, e) in c.env.iter().enumerate() {
        if let Err(reason) = validation::is_env_var_name(&e.name) {
            errors.invalid(format!("{path}.env[{i}].name"), &e.name, &reason);
        }
    }
    for (i, m) in c.volume_mounts.iter().enumerate() {
        if !volumes.contains(m.name.as_str()) {
            errors.push(
                format!("{path}.volumeMounts[{i}].name"),
                format!("Not found: {:?}", m.name),
            );
        }
        if m.mount_path.is_empty() {
            errors.required(format!("{path}.volumeMounts[{i}].mountPath"));
        }
        if !m.sub_path.is_empty() {
            validate_local_path(
                &format!("{path}.volumeMounts[{i}].subPath"),
                &m.sub_path,
                false,
                errors,
            );
        }
    }
    if let Some(r) = &c.resources {
        // The path is written only for an error (every pod's create
        // passes here).
        let qpath = |which: &str, name: &str| format!("{path}.resources.{which}[{name}]");
        for (which, map) in [("limits", &r.limits), ("requests", &r.requests)] {
            for (name, value) in map {
                match value.parse::<Quantity>() {
                    Ok(q) if q.milli_value() < 0 => errors.invalid(
                        qpath(which, name),
                        value,
                        "must be greater than or equal to 0",
                    ),
                    Ok(_) => {}
                    Err(e) => errors.invalid(qpath(which, name), value, e.to_string()),
                }
            }
        }
        for (name, request) in &r.requests {
            let (Some(limit), Ok(asked)) = (r.limits.get(name), request.parse::<Quantity>()) else {
                continue;
            };
            if limit.parse::<Quantity>().is_ok_and(|l| asked > l) {
                errors.invalid(
                    qpath("requests", name),
                    request,
                    format!("must be less than or equal to {name} limit of {limit}"),
                );
            }
        }
    }
}

/// `path` is called only for an error.
pub(in crate::strategy) fn validate_protocol(
    path: impl FnOnce() -> String,
    protocol: &str,
    errors: &mut FieldErrors,
) {
    if !matches!(protocol, "TCP" | "UDP" | "SCTP") {
        errors.push(
            path(),
            format!(
                "Unsupported value: {protocol:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
            ),
        );
    }
}
