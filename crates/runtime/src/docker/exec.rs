//! Commands in containers (run to their end, or attached to a terminal
//! or streams), and attaching to a container's own streams.

use std::time::Duration;

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures::{StreamExt as _, TryStreamExt as _};

use super::{DockerRuntime, docker_error};
use crate::{Error, ExecOutput, Result};

impl DockerRuntime {
    /// Runs `command` to its end ([`Runtime::exec`](crate::Runtime::exec)).
    pub(super) async fn exec_output(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput> {
        let run = async {
            let created = self
                .docker
                .create_exec(
                    id,
                    CreateExecOptions {
                        cmd: Some(command.to_vec()),
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        ..Default::default()
                    },
                )
                .await
                .map_err(docker_error)?;
            let mut out = ExecOutput::default();
            let started = self
                .docker
                .start_exec(&created.id, Some(StartExecOptions::default()))
                .await
                .map_err(docker_error)?;
            if let StartExecResults::Attached { mut output, .. } = started {
                while let Some(chunk) = output.next().await {
                    match chunk.map_err(docker_error)? {
                        bollard::container::LogOutput::StdErr { message } => {
                            out.stderr.extend_from_slice(&message)
                        }
                        other => out.stdout.extend_from_slice(&other.into_bytes()),
                    }
                }
            }
            let inspected = self
                .docker
                .inspect_exec(&created.id)
                .await
                .map_err(docker_error)?;
            out.exit_code = inspected.exit_code.unwrap_or(-1);
            Ok(out)
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    /// Starts `command` attached ([`Runtime::exec_attach`](crate::Runtime::exec_attach)).
    pub(super) async fn exec_attached(
        &self,
        id: &str,
        command: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<crate::Attached> {
        let created = self
            .docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(command.to_vec()),
                    attach_stdin: Some(stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(tty),
                    ..Default::default()
                },
            )
            .await
            .map_err(docker_error)?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    tty,
                    ..Default::default()
                }),
            )
            .await
            .map_err(docker_error)?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(Error::Runtime(
                "the engine did not attach the command".into(),
            ));
        };
        let output = output
            .map_ok(|chunk| match chunk {
                bollard::container::LogOutput::StdErr { message } => (true, message),
                other => (false, other.into_bytes()),
            })
            .map_err(docker_error);
        Ok(crate::Attached {
            exec: created.id,
            input,
            output: Box::pin(output),
        })
    }

    /// Attaches to a container's streams ([`Runtime::attach`](crate::Runtime::attach)).
    pub(super) async fn attach_container(&self, id: &str, stdin: bool) -> Result<crate::Attached> {
        let options = bollard::query_parameters::AttachContainerOptionsBuilder::new()
            .stdin(stdin)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .logs(false)
            .build();
        let attached = self
            .docker
            .attach_container(id, Some(options))
            .await
            .map_err(docker_error)?;
        let output = attached
            .output
            .map_ok(|chunk| match chunk {
                bollard::container::LogOutput::StdErr { message } => (true, message),
                other => (false, other.into_bytes()),
            })
            .map_err(docker_error);
        Ok(crate::Attached {
            exec: id.to_string(),
            input: attached.input,
            output: Box::pin(output),
        })
    }
}
