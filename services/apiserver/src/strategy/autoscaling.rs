//! HorizontalPodAutoscalers (autoscaling/v2).

use skiff::pb::autoscaling::v2::{
    HorizontalPodAutoscaler, MetricSpec, MetricTarget, ResourceMetricSource,
};
use skiff::quantity::Quantity;
use skiff::validation::FieldErrors;

use super::*;

impl Strategy for HorizontalPodAutoscaler {
    fn default_fields(&mut self) {
        let Some(spec) = &mut self.spec else { return };
        spec.min_replicas.get_or_insert(1);
        if spec.metrics.is_empty() {
            spec.metrics.push(MetricSpec {
                r#type: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: Some(MetricTarget {
                        r#type: "Utilization".into(),
                        average_utilization: Some(80),
                        ..Default::default()
                    }),
                }),
            });
        }
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let Some(spec) = &self.spec else {
            return errors.required("spec");
        };
        unsupported::autoscaler_behavior(spec.behavior.as_ref(), errors);
        match &spec.scale_target_ref {
            None => errors.required("spec.scaleTargetRef"),
            Some(target) => {
                if !matches!(
                    target.kind.as_str(),
                    "Deployment" | "ReplicaSet" | "ReplicationController"
                ) {
                    errors.invalid(
                        "spec.scaleTargetRef.kind",
                        &target.kind,
                        "supported values: \"Deployment\", \"ReplicaSet\", \"ReplicationController\"",
                    );
                }
                if target.name.is_empty() {
                    errors.required("spec.scaleTargetRef.name");
                }
            }
        }
        let min = spec.min_replicas.unwrap_or(1);
        if min < 1 {
            errors.invalid(
                "spec.minReplicas",
                min.to_string(),
                "must be greater than or equal to 1",
            );
        }
        if spec.max_replicas < min.max(1) {
            errors.invalid(
                "spec.maxReplicas",
                spec.max_replicas.to_string(),
                "must be greater than or equal to minReplicas (and 1)",
            );
        }
        for (i, metric) in spec.metrics.iter().enumerate() {
            let path = format!("spec.metrics[{i}]");
            if metric.r#type != "Resource" {
                errors.invalid(
                    format!("{path}.type"),
                    &metric.r#type,
                    "supported values: \"Resource\"",
                );
                continue;
            }
            let Some(resource) = &metric.resource else {
                errors.required(format!("{path}.resource"));
                continue;
            };
            if !matches!(resource.name.as_str(), "cpu" | "memory") {
                errors.invalid(
                    format!("{path}.resource.name"),
                    &resource.name,
                    "supported values: \"cpu\", \"memory\"",
                );
            }
            let target = resource.target.clone().unwrap_or_default();
            match target.r#type.as_str() {
                "Utilization" if target.average_utilization.is_some_and(|u| u > 0) => {}
                "Utilization" => {
                    errors.required(format!("{path}.resource.target.averageUtilization"))
                }
                "AverageValue" if target.average_value.parse::<Quantity>().is_ok() => {}
                "AverageValue" => errors.invalid(
                    format!("{path}.resource.target.averageValue"),
                    &target.average_value,
                    "must be a quantity like 200m or 64Mi",
                ),
                other => errors.invalid(
                    format!("{path}.resource.target.type"),
                    other,
                    "supported values: \"Utilization\", \"AverageValue\"",
                ),
            }
        }
    }
}
