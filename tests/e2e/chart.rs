//! `charts/skiff` and `scripts/image`: the chart lints, renders manifests
//! Kubernetes 1.35 accepts and refuses nonsense values; the image runs; and
//! Helm installs the chart into a running `skiff up`, where the Skiff inside
//! answers — then upgrades and uninstalls it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn chart() -> String {
    root().join("charts/skiff").display().to_string()
}

/// Runs `program args`: stdout, or stdout and stderr as the error.
fn run(program: &Path, args: &[&str], env: &[(&str, &Path)]) -> Result<String, String> {
    let mut command = Command::new(program);
    command.args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{} {args:?}: {stdout}{}",
            program.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn the_chart_lints_renders_valid_manifests_and_refuses_nonsense_values() {
    let helm4 = skiff_testkit::helm_binary().unwrap();
    let helm3 = skiff_testkit::helm3_binary().unwrap();
    for helm in [helm4, helm3] {
        lint_render_and_refuse(&helm);
    }
}

/// With one Helm: `lint --strict`, three renderings Kubernetes 1.35's
/// schemas accept, and values the schema (or the templates) refuse.
fn lint_render_and_refuse(helm: &Path) {
    let home = tempfile::tempdir().unwrap();
    let env = [
        ("HELM_CACHE_HOME", home.path()),
        ("HELM_CONFIG_HOME", home.path()),
        ("HELM_DATA_HOME", home.path()),
    ];
    let chart = chart();
    let lint = run(helm, &["lint", "--strict", &chart], &env).unwrap();
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let validate = skiff_testkit::find_program("kubernetes-validate", &[])
        .expect("kubernetes-validate is installed by scripts/deps");
    let cases: [(&str, &[&str], &[&str]); 3] = [
        (
            "defaults",
            &[],
            &["StatefulSet", "PersistentVolumeClaim", "Role", "Pod"],
        ),
        (
            "HA: 3 API servers on etcd",
            &[
                "--set",
                "apiServer.replicas=3",
                "--set",
                "etcd.endpoints={http://etcd-0:2379,http://etcd-1:2379,http://etcd-2:2379}",
                "--set",
                "service.type=NodePort",
            ],
            &[
                "replicas: 3",
                "--etcd=http://etcd-0:2379,",
                "SKIFF_CLUSTER_TOKEN",
            ],
        ),
        (
            "agents",
            &["--set", "agent.enabled=true"],
            &[
                "DaemonSet",
                "privileged: true",
                "node-token",
                "command: [\"/usr/bin/skiff-agent\"]",
            ],
        ),
    ];
    for (what, set, expect) in cases {
        let mut args = vec!["template", "t", chart.as_str()];
        args.extend_from_slice(set);
        let rendered = run(helm, &args, &env).unwrap();
        for text in expect {
            assert!(
                rendered.contains(text),
                "{what}: no {text:?} in\n{rendered}"
            );
        }
        assert!(!rendered.contains("<no value>"), "{what}:\n{rendered}");
        let file = home.path().join("rendered.yaml");
        std::fs::write(&file, &rendered).unwrap();
        let checked = run(
            &validate,
            &[
                "--strict",
                "--kubernetes-version",
                "1.35",
                &file.display().to_string(),
            ],
            &[],
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        let documents = rendered.matches("\nkind: ").count();
        assert_eq!(
            checked.matches(" passed for resource ").count(),
            documents,
            "{what}: every manifest passes:\n{checked}"
        );
    }

    // What would not work is refused before anything is made (Helm 3 and
    // 4 word the schema's errors differently: both name the value).
    for (set, says) in [
        ("apiServer.replicas=3", &["etcd", "endpoints"][..]),
        ("apiServer.replicas=three", &["replicas", "integer"]),
        ("service.type=Ingress", &["service", "type"]),
        ("apiServer.podSecurityDefault=lax", &["podSecurityDefault"]),
        (
            "serviceAccount.create=false",
            &["needs serviceAccount.name"],
        ),
    ] {
        let refused = run(helm, &["template", "t", &chart, "--set", set], &env).unwrap_err();
        for word in says {
            assert!(refused.contains(word), "{set}: {refused}");
        }
    }
}

/// `skiff up` as a new user starts it, on its own ranges and Docker
/// network, stopped and cleaned up when dropped.
struct Up {
    child: Option<std::process::Child>,
    node: String,
    network: String,
    home: tempfile::TempDir,
}

/// A test's own address ranges for its `skiff up`.
struct Ranges {
    service_cidr: &'static str,
    node_ports: &'static str,
    lb_pool: &'static str,
}

impl Up {
    fn start(node: &str, ranges: &Ranges) -> Self {
        let home = tempfile::tempdir().unwrap();
        let port = skiff_testkit::free_port().unwrap();
        let mut up = Up {
            child: None,
            node: node.to_string(),
            network: format!("skiff-{node}"),
            home,
        };
        let child = Command::new(skiff_testkit::skiff_binary().unwrap())
            .args(["up", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--node-name", node, "--network", &up.network])
            .args(["--proxy-mode", "iptables"])
            .args(["--service-cidr", ranges.service_cidr])
            .args(["--service-node-port-range", ranges.node_ports])
            .args(["--lb-pool", ranges.lb_pool])
            .arg("--data-dir")
            .arg(up.home.path().join("data"))
            .env("HOME", up.home.path())
            .env_remove("SKIFF_CONFIG")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        up.child = Some(child);
        skiff_testkit::stdout_until(
            up.child.as_mut().unwrap(),
            "Press Ctrl-C",
            Duration::from_secs(60),
        );
        up
    }

    fn kubeconfig(&self) -> PathBuf {
        self.home.path().join(".skiff/kubeconfig")
    }

    /// kubectl or helm as the admin (`KUBECONFIG`), in the home dir.
    fn tool(&self, program: &Path, args: &[&str]) -> Result<String, String> {
        let kubeconfig = self.kubeconfig();
        let home = self.home.path();
        let cache = home.join("helm");
        run(
            program,
            args,
            &[
                ("KUBECONFIG", &kubeconfig),
                ("HOME", home),
                ("HELM_CACHE_HOME", &cache),
                ("HELM_CONFIG_HOME", &cache),
                ("HELM_DATA_HOME", &cache),
            ],
        )
    }

    /// A shell line (a command NOTES.txt prints) as the admin, in the
    /// home dir, with kubectl on PATH.
    fn shell(&self, line: &str) -> Result<String, String> {
        let kubectl = skiff_testkit::kubectl_binary().unwrap();
        let path = format!(
            "{}:{}",
            kubectl.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new("sh")
            .args(["-c", line])
            .current_dir(self.home.path())
            .env("PATH", path)
            .env("KUBECONFIG", self.kubeconfig())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "{line}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Ok(skiff) = skiff_testkit::skiff_binary() {
            let _ = Command::new(skiff)
                .args(["agent", "--cleanup-proxy", "--node-name", &self.node])
                .stdout(Stdio::null())
                .status();
        }
        let ids = skiff_testkit::docker_containers_of(&self.node);
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
        let _ = Command::new("docker")
            .args(["network", "rm", &self.network])
            .output();
        for pod in std::fs::read_dir(self.home.path().join("data/agent/pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = skiff_agent::subpath::unmount_all(&pod.path());
        }
    }
}

/// Polls `check` every half second until it holds or `within` passes.
fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

/// `scripts/image` with the binary under test: the image's name.
fn image() -> &'static str {
    let tag = "skiff-test/skiff:chart";
    let binary = skiff_testkit::skiff_binary().unwrap();
    let built = run(
        &root().join("scripts/image"),
        &["--binary", &binary.display().to_string(), "--tag", tag],
        &[],
    )
    .unwrap();
    assert!(built.starts_with(tag) && built.contains(" MiB"), "{built}");
    tag
}

#[test]
fn helm_installs_the_chart_into_skiff_and_the_skiff_inside_answers() {
    let tag = image();
    let version = run(
        Path::new("docker"),
        &[
            "run",
            "--rm",
            "--label",
            "io.skiff.managed=true",
            tag,
            "version",
        ],
        &[],
    )
    .unwrap();
    assert!(
        version.contains(&format!("skiff {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    // The agent alone, which the chart's DaemonSet runs.
    let agent = run(
        Path::new("docker"),
        &[
            "run",
            "--rm",
            "--label",
            "io.skiff.managed=true",
            "--entrypoint",
            "/usr/bin/skiff-agent",
            tag,
            "--version",
        ],
        &[],
    )
    .unwrap();
    assert_eq!(
        agent.trim(),
        format!("skiff-agent {}", env!("CARGO_PKG_VERSION"))
    );

    let node = format!("chart-{}", std::process::id());
    let up = Up::start(
        &node,
        &Ranges {
            service_cidr: "10.206.0.0/24",
            node_ports: "31261-31270",
            lb_pool: "127.0.206.1-127.0.206.9",
        },
    );
    let helm = skiff_testkit::helm_binary().unwrap();
    let kubectl = skiff_testkit::kubectl_binary().unwrap();
    up.tool(&kubectl, &["create", "namespace", "inner"])
        .unwrap();
    let (repository, image_tag) = tag.split_once(':').unwrap();
    let image = [
        format!("image.repository={repository}"),
        format!("image.tag={image_tag}"),
    ];
    let chart = chart();
    // `helm VERB inner CHART -n inner --wait ... --set IMAGE` and `extra`.
    let release = |verb: &str, extra: &[&str]| -> Result<String, String> {
        let mut args = vec![verb, "inner", chart.as_str(), "-n", "inner", "--wait"];
        args.extend(["--timeout", "180s", "--set", &image[0], "--set", &image[1]]);
        args.extend_from_slice(extra);
        up.tool(&helm, &args)
    };
    let installed = release("install", &[]).unwrap();
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    let ready = up
        .tool(
            &kubectl,
            &[
                "-n",
                "inner",
                "get",
                "pod",
                "inner-skiff-apiserver-0",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
        )
        .unwrap();
    assert_eq!(ready, "True");

    // The container runs as the chart's user, not the image's root.
    let ids = skiff_testkit::docker_containers_of(&node);
    let users: Vec<String> = ids
        .iter()
        .filter_map(|id| {
            let out = run(
                Path::new("docker"),
                &[
                    "inspect",
                    "-f",
                    "{{index .Config.Labels \"io.skiff.container.name\"}} {{.Config.User}}",
                    id,
                ],
                &[],
            )
            .ok()?;
            out.starts_with("apiserver ")
                .then(|| out.trim().to_string())
        })
        .collect();
    assert_eq!(users, ["apiserver 65532:65532"]);

    let tested = up.tool(&helm, &["test", "inner", "-n", "inner"]).unwrap();
    assert!(tested.contains("Phase:          Succeeded"), "{tested}");

    // NOTES.txt's commands, as printed: the admin kubeconfig out of the
    // Secret, then `get nodes` through the chart's Service's cluster IP.
    let notes = up
        .tool(&helm, &["get", "notes", "inner", "-n", "inner"])
        .unwrap();
    let command = |needle: &str| -> String {
        notes
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("NOTES.txt has no {needle:?}:\n{notes}"))
            .trim()
            .to_string()
    };
    up.shell(&command("admin\\.kubeconfig")).unwrap();
    let nodes = up
        .shell(&command("--tls-server-name"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(nodes.is_empty(), "the inner cluster has no nodes: {nodes}");
    let inner = command("--tls-server-name").replace("get nodes", "get namespaces");
    let namespaces = up.shell(&inner).unwrap();
    assert!(namespaces.contains("kube-system"), "{namespaces}");

    // A changed value rolls the scheduler's Deployment.
    let before = up
        .tool(&kubectl, &["-n", "inner", "get", "rs", "-o", "name"])
        .unwrap();
    release(
        "upgrade",
        &["--set", "scheduler.extraArgs={--lease-duration-secs=20}"],
    )
    .unwrap();
    let after = up
        .tool(&kubectl, &["-n", "inner", "get", "rs", "-o", "name"])
        .unwrap();
    let new: Vec<&str> = after.lines().filter(|l| !before.contains(*l)).collect();
    assert_eq!(new.len(), 1, "one new ReplicaSet: {before} → {after}");
    assert!(new[0].contains("inner-skiff-scheduler-"), "{new:?}");
    let args = up
        .tool(
            &kubectl,
            &[
                "-n",
                "inner",
                "get",
                "deployment",
                "inner-skiff-scheduler",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].args}",
            ],
        )
        .unwrap();
    assert!(args.contains("--lease-duration-secs=20"), "{args}");

    // Uninstalling leaves the claim (the cluster's state) and nothing else.
    up.tool(
        &helm,
        &[
            "uninstall",
            "inner",
            "-n",
            "inner",
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .unwrap();
    wait_for("only the claim is left", Duration::from_secs(60), || {
        let left = up.tool(
            &kubectl,
            &[
                "-n", "inner", "get",
                "pods,services,statefulsets,deployments,replicasets,secrets,roles,rolebindings,serviceaccounts,persistentvolumeclaims",
                "-o", "name",
            ],
        )?;
        let left: Vec<&str> = left
            .lines()
            .filter(|l| *l != "serviceaccount/default")
            .collect();
        if left == ["persistentvolumeclaim/data-inner-skiff-apiserver-0"] {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
}

/// The HA values live: three API servers on one etcd (the test's, on
/// loopback, reached by the pods through a Service without a selector)
/// serve one cluster; one of them deleted, the others go on answering
/// through the chart's Service, and it comes back into the same cluster.
#[test]
fn three_api_servers_on_etcd_serve_one_cluster_and_ride_out_the_loss_of_one() {
    let tag = image();
    let etcd = skiff_testkit::etcd::EtcdCluster::start(1).unwrap();
    let etcd_port = etcd.endpoints()[0].rsplit(':').next().unwrap().to_string();
    let node = format!("chart-ha-{}", std::process::id());
    let up = Up::start(
        &node,
        &Ranges {
            service_cidr: "10.207.0.0/24",
            node_ports: "31271-31280",
            lb_pool: "127.0.207.1-127.0.207.9",
        },
    );
    let helm = skiff_testkit::helm_binary().unwrap();
    let kubectl = skiff_testkit::kubectl_binary().unwrap();
    up.tool(&kubectl, &["create", "namespace", "inner"])
        .unwrap();
    let etcd_service = up.home.path().join("etcd.yaml");
    std::fs::write(
        &etcd_service,
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: etcd, namespace: inner}}\n\
             spec: {{ports: [{{name: client, port: 2379}}]}}\n---\n\
             apiVersion: v1\nkind: Endpoints\nmetadata: {{name: etcd, namespace: inner}}\n\
             subsets: [{{addresses: [{{ip: 127.0.0.1}}], ports: [{{name: client, port: {etcd_port}}}]}}]\n"
        ),
    )
    .unwrap();
    up.tool(
        &kubectl,
        &["apply", "-f", &etcd_service.display().to_string()],
    )
    .unwrap();
    let (repository, image_tag) = tag.split_once(':').unwrap();
    let chart = chart();
    up.tool(
        &helm,
        &[
            "install",
            "inner",
            &chart,
            "-n",
            "inner",
            "--wait",
            "--timeout",
            "180s",
            "--set",
            &format!("image.repository={repository}"),
            "--set",
            &format!("image.tag={image_tag}"),
            "--set",
            "apiServer.replicas=3",
            "--set",
            "etcd.endpoints={http://etcd.inner.svc:2379}",
        ],
    )
    .unwrap();
    let tested = up.tool(&helm, &["test", "inner", "-n", "inner"]).unwrap();
    assert!(tested.contains("Phase:          Succeeded"), "{tested}");

    // The admin's kubeconfig, through the Service's cluster IP.
    up.shell(
        "kubectl -n inner get secret inner-skiff-credentials -o jsonpath='{.data.admin\\.kubeconfig}' | base64 -d > skiff.kubeconfig",
    )
    .unwrap();
    let inner = |args: &str| {
        up.shell(&format!(
            "kubectl --kubeconfig skiff.kubeconfig --server https://$(kubectl -n inner get svc inner-skiff -o jsonpath='{{.spec.clusterIP}}'):6443 --tls-server-name inner-skiff.inner.svc {args}"
        ))
    };
    inner("create configmap shared --from-literal=k=v").unwrap();
    // The inner `kubernetes` Service leads to the three servers alive.
    wait_for(
        "three servers in the inner Endpoints",
        Duration::from_secs(30),
        || {
            let ips = inner(
                "-n default get endpoints kubernetes -o jsonpath={.subsets[*].addresses[*].ip}",
            )?;
            (ips.split_whitespace().count() == 3)
                .then_some(())
                .ok_or(ips)
        },
    );

    // One server goes: every request still answers (the Service leads to
    // the others), and the cluster it rejoins is the same.
    up.tool(
        &kubectl,
        &[
            "-n",
            "inner",
            "delete",
            "pod",
            "inner-skiff-apiserver-1",
            "--wait=false",
        ],
    )
    .unwrap();
    for _ in 0..10 {
        let value = inner("get configmap shared -o jsonpath={.data.k}").unwrap();
        assert_eq!(value, "v");
    }
    wait_for(
        "the server is back and Ready",
        Duration::from_secs(90),
        || {
            let ready = up.tool(
                &kubectl,
                &[
                    "-n",
                    "inner",
                    "get",
                    "statefulset",
                    "inner-skiff-apiserver",
                    "-o",
                    "jsonpath={.status.readyReplicas}",
                ],
            )?;
            (ready == "3").then_some(()).ok_or(ready)
        },
    );
    inner("get configmap shared").unwrap();

    // Uninstalled, what is left is the token that opens the CA sealed in
    // etcd (kept by design: a new install resumes the cluster).
    up.tool(
        &helm,
        &[
            "uninstall",
            "inner",
            "-n",
            "inner",
            "--wait",
            "--timeout",
            "120s",
        ],
    )
    .unwrap();
    wait_for(
        "only the cluster token is left",
        Duration::from_secs(60),
        || {
            let left = up.tool(
                &kubectl,
                &[
                    "-n",
                    "inner",
                    "get",
                    "pods,statefulsets,deployments,secrets,roles",
                    "-o",
                    "name",
                ],
            )?;
            (left.trim() == "secret/inner-skiff-cluster-token")
                .then_some(())
                .ok_or(left)
        },
    );
}
