use super::*;

#[test]
fn scaling_up_goes_by_four_pods_or_double_whichever_is_more() {
    assert_eq!(scale_up_limit(1, true), 5);
    assert_eq!(scale_up_limit(4, true), 8);
    assert_eq!(scale_up_limit(10, true), 20);
    assert_eq!(scale_up_limit(i32::MAX, true), i32::MAX);
    // Without a behavior: double, at least 4.
    assert_eq!(scale_up_limit(1, false), 4);
    assert_eq!(scale_up_limit(10, false), 20);
}

fn utilization(percent: i32) -> MetricTarget {
    MetricTarget {
        r#type: "Utilization".into(),
        average_utilization: Some(percent),
        ..Default::default()
    }
}

fn samples(usage: &[i64], request: i64) -> Vec<Sample> {
    usage
        .iter()
        .map(|u| Sample { usage: *u, request })
        .collect()
}

#[test]
fn replicas_follow_utilization_beyond_the_tolerance() {
    // 2 pods at 100 % of a 50 % target: 4.
    let (r, status) =
        metric_replicas("cpu", &utilization(50), &samples(&[100, 100], 100), 2).unwrap();
    assert_eq!(r, 4);
    assert_eq!(status.average_utilization, Some(100));
    // Within 10 %: unchanged.
    let (r, _) = metric_replicas("cpu", &utilization(50), &samples(&[54, 54], 100), 2).unwrap();
    assert_eq!(r, 2);
    // Idle: down to 1.
    let (r, _) = metric_replicas("cpu", &utilization(50), &samples(&[1, 1, 1], 100), 3).unwrap();
    assert_eq!(r, 1);
    // No requests: no utilization.
    assert!(metric_replicas("cpu", &utilization(50), &samples(&[10], 0), 1).is_err());
    assert!(metric_replicas("cpu", &utilization(50), &[], 1).is_err());
}

#[test]
fn average_values_are_per_pod_quantities() {
    let target = MetricTarget {
        r#type: "AverageValue".into(),
        average_value: "100m".into(),
        ..Default::default()
    };
    let (r, status) = metric_replicas("cpu", &target, &samples(&[300, 300], 0), 2).unwrap();
    // 300m a pod, 100m wanted: 6.
    assert_eq!(r, 6);
    assert_eq!(status.average_value, "300m");
}

#[test]
fn scaling_down_waits_out_its_window_and_up_does_not() {
    let s = Duration::from_secs;
    // A high recommendation 100 s ago holds a scale-down back for 300 s.
    let history = [(s(100), 5), (s(0), 1)];
    assert_eq!(stabilize(5, &history, s(0), s(300)), 5);
    // Outside the window it no longer counts.
    let history = [(s(400), 5), (s(0), 1)];
    assert_eq!(stabilize(5, &history, s(0), s(300)), 1);
    // Scaling up is at once with a zero window.
    assert_eq!(stabilize(1, &[(s(10), 1), (s(0), 4)], s(0), s(300)), 4);
}

#[test]
fn behavior_sets_each_directions_window() {
    let s = Duration::from_secs;
    assert_eq!(windows(None), (s(0), s(300)), "Kubernetes' defaults");
    let behavior: skiff::pb::autoscaling::v2::HorizontalPodAutoscalerBehavior =
        skiff::json::from_value(serde_json::json!({
            "scaleUp": {"stabilizationWindowSeconds": 60},
            "scaleDown": {"stabilizationWindowSeconds": 10},
        }))
        .unwrap();
    let (up, down) = windows(Some(&behavior));
    assert_eq!((up, down), (s(60), s(10)));
    // With these windows, a dip 20 s ago no longer holds a scale-down,
    // and a peak 30 s ago holds a scale-up back to it.
    assert_eq!(stabilize(5, &[(s(20), 5), (s(0), 2)], up, down), 2);
    assert_eq!(stabilize(2, &[(s(30), 2), (s(0), 6)], up, down), 2);
    // One direction set leaves the other at its default.
    let behavior: skiff::pb::autoscaling::v2::HorizontalPodAutoscalerBehavior =
        skiff::json::from_value(
            serde_json::json!({"scaleDown": {"stabilizationWindowSeconds": 0}}),
        )
        .unwrap();
    assert_eq!(windows(Some(&behavior)), (s(0), s(0)));
}
