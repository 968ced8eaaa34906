//! Images: finding one on the engine, and pulling it (with a time
//! limit, so a pod hears that the pull failed).

use std::time::Duration;

use bollard::query_parameters::CreateImageOptionsBuilder;
use futures::StreamExt as _;

use super::{DockerRuntime, docker_error, is_status};
use crate::{Error, Result};

/// How long one image pull may take before the pod is told it failed.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

impl DockerRuntime {
    pub(super) async fn image_id(&self, image: &str) -> Result<Option<String>> {
        match self.docker.inspect_image(image).await {
            Ok(found) => Ok(Some(found.id.unwrap_or_default())),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(docker_error(e)),
        }
    }

    pub(super) async fn pull(&self, image: &str) -> Result<()> {
        // A digest names the image whole; else repository and tag.
        let options = if image.contains('@') {
            CreateImageOptionsBuilder::default()
                .from_image(image)
                .build()
        } else {
            let (repo, tag) = match image.rsplit_once(':') {
                Some((repo, tag)) if !tag.contains('/') => (repo, tag),
                _ => (image, "latest"),
            };
            CreateImageOptionsBuilder::default()
                .from_image(repo)
                .tag(tag)
                .build()
        };
        let pull = async {
            let mut stream = self.docker.create_image(Some(options), None, None);
            while let Some(step) = stream.next().await {
                let step = step.map_err(|e| e.to_string())?;
                if let Some(detail) = step.error_detail {
                    return Err(detail.message.unwrap_or_default());
                }
            }
            Ok(())
        };
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::ImagePull {
                image: image.to_string(),
                message,
            }),
            Err(_) => Err(Error::ImagePull {
                image: image.to_string(),
                message: format!("no answer from the registry in {PULL_TIMEOUT:?}"),
            }),
        }
    }
}
