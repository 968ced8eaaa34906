//! The commands that stream to and from a pod's containers: `logs`,
//! `exec` (plain or attached, with a terminal) and `attach`, and the
//! local terminal they put in raw mode.

use std::io::Write as _;

use futures::StreamExt as _;
use skiff::pb::core::v1::pod_exec_client::PodExecClient;
use skiff::pb::core::v1::pod_logs_client::PodLogsClient;
use skiff::pb::core::v1::{PodExecRequest, PodLogsRequest};

use crate::{Ctl, Result};

impl Ctl {
    /// `logs POD [-c C] [-f] [--tail N] [--previous]`: the log, streamed
    /// to stdout as it comes.
    ///
    /// # Errors
    /// A missing pod or container, a node that does not answer.
    pub async fn logs(
        &self,
        pod: &str,
        container: &str,
        follow: bool,
        tail: Option<i64>,
        previous: bool,
    ) -> Result<()> {
        let pod = pod
            .strip_prefix("pod/")
            .or_else(|| pod.strip_prefix("pods/"))
            .unwrap_or(pod);
        let mut client = PodLogsClient::new(self.channel.clone());
        let mut stream = client
            .logs(PodLogsRequest {
                namespace: self.namespace.clone(),
                name: pod.to_string(),
                container: container.to_string(),
                follow,
                // kubectl's --tail=-1: everything.
                tail_lines: tail.filter(|t| *t >= 0),
                previous,
                ..Default::default()
            })
            .await
            .map_err(|s| self.server_error(s, "Pod", pod))?
            .into_inner();
        let mut stdout = std::io::stdout();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| self.server_error(s, "Pod", pod))?;
            let _ = stdout.write_all(&chunk.data);
            let _ = stdout.flush();
        }
        Ok(())
    }

    /// `exec POD [-c C] -- CMD ARGS`: runs the command in the container,
    /// prints its stdout and stderr; returns its exit code.
    ///
    /// # Errors
    /// A missing pod or container, a container not running, a node that
    /// does not answer.
    pub async fn exec(&self, pod: &str, container: &str, command: &[String]) -> Result<i32> {
        let pod = pod
            .strip_prefix("pod/")
            .or_else(|| pod.strip_prefix("pods/"))
            .unwrap_or(pod);
        let mut client = PodExecClient::new(self.channel.clone());
        let out = client
            .exec(PodExecRequest {
                namespace: self.namespace.clone(),
                name: pod.to_string(),
                container: container.to_string(),
                command: command.to_vec(),
                timeout_seconds: None,
                tty: false,
                stdin: false,
            })
            .await
            .map_err(|s| self.server_error(s, "Pod", pod))?
            .into_inner();
        let _ = std::io::stdout().write_all(&out.stdout);
        let _ = std::io::stderr().write_all(&out.stderr);
        let _ = std::io::stdout().flush();
        Ok(out.exit_code)
    }

    /// `exec -i [-t] POD [-c C] -- CMD ARGS`: runs the command attached:
    /// this process's stdin goes to it (`stdin`), with a terminal (`tty`;
    /// the local one is put in raw mode while it runs, and its size
    /// follows the window); output is printed as it comes. Returns the
    /// command's exit code.
    ///
    /// # Errors
    /// As [`Ctl::exec`]; also a runtime that cannot attach.
    pub async fn exec_attached(
        &self,
        pod: &str,
        container: &str,
        command: &[String],
        stdin: bool,
        tty: bool,
    ) -> Result<i32> {
        self.attached(pod, container, command, stdin, tty).await
    }

    /// `attach POD [-c C] [-i] [-t]`: joins the container's own process,
    /// as [`Ctl::exec_attached`] does a command's (its stdin only when the
    /// container keeps it open, `stdin: true`). Returns 0 when the process
    /// or the stream ends.
    ///
    /// # Errors
    /// As [`Ctl::exec`].
    pub async fn attach(&self, pod: &str, container: &str, stdin: bool, tty: bool) -> Result<i32> {
        self.attached(pod, container, &[], stdin, tty).await
    }

    /// A command (`command` not empty) or the container's own process,
    /// attached.
    async fn attached(
        &self,
        pod: &str,
        container: &str,
        command: &[String],
        stdin: bool,
        tty: bool,
    ) -> Result<i32> {
        use skiff::pb::core::v1::pod_exec_input::Input;
        use skiff::pb::core::v1::pod_exec_output::Output;
        use skiff::pb::core::v1::{PodExecInput, TerminalSize};
        let pod = pod
            .strip_prefix("pod/")
            .or_else(|| pod.strip_prefix("pods/"))
            .unwrap_or(pod);
        // As kubectl: a terminal only when stdin is one (a pipe into a
        // remote terminal would lose the output written after its EOF).
        let stdin_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stdin());
        if tty && stdin && !stdin_is_terminal {
            eprintln!("Unable to use a TTY - input is not a terminal or the right kind of file");
        }
        let tty = tty && (!stdin || stdin_is_terminal);
        let terminal = tty && stdin;
        let (tx, rx) = tokio::sync::mpsc::channel::<PodExecInput>(64);
        let start = PodExecInput {
            input: Some(Input::Start(PodExecRequest {
                namespace: self.namespace.clone(),
                name: pod.to_string(),
                container: container.to_string(),
                command: command.to_vec(),
                timeout_seconds: None,
                tty,
                stdin,
            })),
        };
        let _ = tx.send(start).await;
        let _raw = if terminal {
            terminal::Raw::enter()
        } else {
            None
        };
        if terminal {
            if let Some((width, height)) = terminal::size() {
                let _ = tx
                    .send(PodExecInput {
                        input: Some(Input::Resize(TerminalSize { width, height })),
                    })
                    .await;
            }
            let resizes = tx.clone();
            tokio::spawn(async move {
                let Ok(mut winch) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                else {
                    return;
                };
                while winch.recv().await.is_some() {
                    if let Some((width, height)) = terminal::size() {
                        let resize = Input::Resize(TerminalSize { width, height });
                        if resizes
                            .send(PodExecInput {
                                input: Some(resize),
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
        if stdin {
            // A plain thread: reading stdin blocks, and must not hold a
            // runtime worker.
            let input = tx.clone();
            std::thread::spawn(move || {
                use std::io::Read as _;
                let mut buffer = vec![0u8; 16 * 1024];
                let mut stdin = std::io::stdin().lock();
                loop {
                    match stdin.read(&mut buffer) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let chunk = Input::Stdin(buffer[..n].to_vec());
                            if input
                                .blocking_send(PodExecInput { input: Some(chunk) })
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
                let _ = input.blocking_send(PodExecInput {
                    input: Some(Input::CloseStdin(true)),
                });
            });
        }
        // Without stdin, the request stays open (the sender lives here)
        // until the command ends.
        let mut client = PodExecClient::new(self.channel.clone());
        let inputs = tokio_stream::wrappers::ReceiverStream::new(rx);
        let container_itself = command.is_empty();
        let output = if container_itself {
            client.attach_container(inputs).await
        } else {
            client.attach(inputs).await
        };
        let mut output = output
            .map_err(|s| self.server_error(s, "Pod", pod))?
            .into_inner();
        // A container's process reports no exit code: its end is 0.
        let mut code = if container_itself { 0 } else { -1 };
        while let Some(message) = output.next().await {
            let message = message.map_err(|s| self.server_error(s, "Pod", pod))?;
            match message.output {
                Some(Output::Stdout(bytes)) => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&bytes);
                    let _ = out.flush();
                }
                Some(Output::Stderr(bytes)) => {
                    let mut err = std::io::stderr();
                    let _ = err.write_all(&bytes);
                    let _ = err.flush();
                }
                Some(Output::ExitCode(c)) => code = c,
                None => {}
            }
        }
        drop(tx);
        Ok(code)
    }
}

/// The local terminal, for `exec -t`.
mod terminal {
    use rustix::termios::{self, OptionalActions, Termios};

    /// Raw mode on stdin while alive (restored on drop).
    pub struct Raw {
        saved: Termios,
    }

    impl Raw {
        /// Puts the terminal in raw mode: keys go to the remote command
        /// as typed (Ctrl-C included), nothing is echoed locally.
        pub fn enter() -> Option<Self> {
            let stdin = rustix::stdio::stdin();
            let saved = termios::tcgetattr(stdin).ok()?;
            let mut raw = saved.clone();
            raw.make_raw();
            termios::tcsetattr(stdin, OptionalActions::Now, &raw).ok()?;
            Some(Self { saved })
        }
    }

    impl Drop for Raw {
        fn drop(&mut self) {
            let _ = termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &self.saved);
        }
    }

    /// The terminal's width and height in characters.
    pub fn size() -> Option<(u32, u32)> {
        let size = termios::tcgetwinsize(rustix::stdio::stdout()).ok()?;
        Some((u32::from(size.ws_col), u32::from(size.ws_row)))
    }
}
