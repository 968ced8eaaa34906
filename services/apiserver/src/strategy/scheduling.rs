//! PriorityClasses (scheduling.k8s.io/v1), as Kubernetes'
//! `ValidatePriorityClass` judges them: names beginning `system-` are
//! the two system classes' alone, user values stop at 1,000,000,000, the
//! value and preemption policy never change. That only one class is the
//! global default is admission's (it reads the others: `registry`).

use skiff::pb::scheduling::v1::PriorityClass;

use super::*;

/// The highest priority a user's class may have.
pub const HIGHEST_USER_PRIORITY: i32 = 1_000_000_000;
/// The prefix of the system classes' names.
pub const SYSTEM_PREFIX: &str = "system-";
/// Kubernetes' system classes: name and value.
pub const SYSTEM_CLASSES: &[(&str, i32)] = &[
    ("system-node-critical", 2_000_001_000),
    ("system-cluster-critical", 2_000_000_000),
];
/// The default preemption policy.
pub const PREEMPT_LOWER_PRIORITY: &str = "PreemptLowerPriority";
/// The preemption policies.
pub const PREEMPTION_POLICIES: &[&str] = &["Never", PREEMPT_LOWER_PRIORITY];

impl Strategy for PriorityClass {
    fn default_fields(&mut self) {
        self.preemption_policy
            .get_or_insert_with(|| PREEMPT_LOWER_PRIORITY.into());
    }

    fn validate(&self, errors: &mut FieldErrors) {
        let name = self.name();
        if name.starts_with(SYSTEM_PREFIX) {
            let why = match SYSTEM_CLASSES.iter().find(|(n, _)| *n == name) {
                None => Some(format!("{name} is not a known system priority class")),
                Some((_, value)) if *value != self.value => {
                    Some(format!("value of {name} PriorityClass must be {value}"))
                }
                Some(_) if self.global_default => Some(format!(
                    "globalDefault of {name} PriorityClass must be false"
                )),
                Some(_) => None,
            };
            if let Some(why) = why {
                errors.forbidden(
                    "metadata.name",
                    format!(
                        "priority class names with '{SYSTEM_PREFIX}' prefix are reserved for system use only. error: {why}"
                    ),
                );
            }
        } else if self.value > HIGHEST_USER_PRIORITY {
            errors.forbidden(
                "value",
                format!(
                    "maximum allowed value of a user defined priority is {HIGHEST_USER_PRIORITY}"
                ),
            );
        }
        match self.preemption_policy.as_deref() {
            None => errors.required("preemptionPolicy"),
            Some(p) if !PREEMPTION_POLICIES.contains(&p) => {
                errors.not_supported("preemptionPolicy", p, PREEMPTION_POLICIES);
            }
            Some(_) => {}
        }
    }

    fn validate_update(&self, old: &Self, errors: &mut FieldErrors) {
        if self.value != old.value {
            errors.forbidden("value", "may not be changed in an update.");
        }
        if self.preemption_policy != old.preemption_policy {
            errors.invalid(
                "preemptionPolicy",
                self.preemption_policy.as_deref().unwrap_or(""),
                "field is immutable",
            );
        }
    }

    fn global_default_class(&self) -> Option<&str> {
        self.global_default.then(|| self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(name: &str, value: i32, policy: Option<&str>) -> PriorityClass {
        let mut pc = PriorityClass {
            value,
            preemption_policy: policy.map(str::to_string),
            ..Default::default()
        };
        pc.metadata_mut().name = name.into();
        pc
    }

    fn errors_of(pc: &PriorityClass, old: Option<&PriorityClass>) -> String {
        let mut errors = FieldErrors::default();
        pc.validate(&mut errors);
        if let Some(old) = old {
            pc.validate_update(old, &mut errors);
        }
        errors.to_string()
    }

    #[test]
    fn system_names_and_high_values_are_reserved_and_values_never_change() {
        let mut high = class("high", 1000, None);
        high.default_fields();
        assert_eq!(
            high.preemption_policy.as_deref(),
            Some("PreemptLowerPriority")
        );
        assert_eq!(errors_of(&high, None), "");
        assert!(
            errors_of(&class("huge", 1_000_000_001, Some("Never")), None).contains(
                "value: Forbidden: maximum allowed value of a user defined priority is 1000000000"
            )
        );
        assert!(
            errors_of(&class("system-mine", 5, Some("Never")), None)
                .contains("prefix are reserved for system use only. error: system-mine is not a known system priority class")
        );
        assert_eq!(
            errors_of(
                &class(
                    "system-node-critical",
                    2_000_001_000,
                    Some("PreemptLowerPriority")
                ),
                None
            ),
            ""
        );
        assert!(
            errors_of(&class("x", 1, Some("Sometimes")), None)
                .contains("preemptionPolicy: Unsupported value: \"Sometimes\"")
        );
        let changed = class("high", 2000, Some("Never"));
        let errors = errors_of(&changed, Some(&high));
        assert!(
            errors.contains("value: Forbidden: may not be changed in an update."),
            "{errors}"
        );
        assert!(
            errors.contains("preemptionPolicy: Invalid value: \"Never\": field is immutable"),
            "{errors}"
        );
    }
}
