//! `skiff token create|list|delete` (kubeadm's bootstrap tokens, Secrets
//! `kube-system/bootstrap-token-ID`) and `skiff auth whoami|can-i`.

use std::time::{Duration, SystemTime};

use skiff::pb::api::v1::{DeleteRequest, ListRequest};
use skiff::pb::authentication::v1::identity_client::IdentityClient;
use skiff::pb::authentication::v1::{
    AccessReview, RulesReviewRequest, RulesReviewStatus, WhoAmIRequest,
};
use skiff::pb::core::v1::Secret;
use skiff_client::Api;

use crate::{Ctl, CtlError, Result, kinds, table};

/// Where bootstrap tokens live, and their type (as kubeadm's).
const NAMESPACE: &str = "kube-system";
const TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";
const PREFIX: &str = "bootstrap-token-";

/// The bootstrap token Secret for `id.secret`, expiring after `ttl`.
pub fn token_secret(id: &str, secret: &str, ttl: Option<Duration>, description: &str) -> Secret {
    let mut data = std::collections::BTreeMap::new();
    let mut put = |k: &str, v: &str| {
        data.insert(k.to_string(), v.to_string());
    };
    put("token-id", id);
    put("token-secret", secret);
    put("usage-bootstrap-authentication", "true");
    put("usage-bootstrap-signing", "true");
    put(
        "auth-extra-groups",
        "system:bootstrappers:skiff:default-node-token",
    );
    if !description.is_empty() {
        put("description", description);
    }
    if let Some(ttl) = ttl {
        let at = SystemTime::now() + ttl;
        put(
            "expiration",
            &humantime::format_rfc3339_seconds(at).to_string(),
        );
    }
    let mut secret_obj = Secret {
        r#type: TOKEN_TYPE.into(),
        string_data: data,
        ..Default::default()
    };
    let meta = skiff::Resource::metadata_mut(&mut secret_obj);
    meta.name = format!("{PREFIX}{id}");
    meta.namespace = NAMESPACE.into();
    secret_obj
}

/// The id of a token or of a token id.
fn token_id(token: &str) -> &str {
    token.split('.').next().unwrap_or(token)
}

impl Ctl {
    fn tokens(&self) -> Api<Secret> {
        Api::new(self.channel.clone())
    }

    /// Makes a bootstrap token and prints it, the CA pin and the command
    /// that joins a machine.
    ///
    /// # Errors
    /// The server refused (e.g. the caller may not create Secrets in
    /// kube-system).
    pub async fn token_create(
        &self,
        ttl: Option<Duration>,
        description: &str,
        ca_hash: &str,
    ) -> Result<()> {
        let id = skiff_pki::random_string(6);
        let secret = skiff_pki::random_string(16);
        self.tokens()
            .create(token_secret(&id, &secret, ttl, description))
            .await
            .map_err(|s| self.server_error(s, "secret", &format!("{PREFIX}{id}")))?;
        println!("{id}.{secret}");
        eprintln!("CA hash: {ca_hash}");
        match ttl {
            Some(ttl) => eprintln!("Valid for {}.", table::human(ttl)),
            None => eprintln!("Never expires (delete it with `skiff token delete {id}`)."),
        }
        eprintln!(
            "Join a machine (from there, with an address it reaches this server at):\n  skiff agent --server {} --token {id}.{secret} --ca-hash {ca_hash}",
            self.server
        );
        Ok(())
    }

    /// Prints the bootstrap tokens: id, time left, expiry, usages and
    /// description (never the secret half).
    ///
    /// # Errors
    /// The server refused.
    pub async fn token_list(&self) -> Result<()> {
        let secrets = self
            .tokens()
            .list(ListRequest {
                namespace: NAMESPACE.into(),
                field_selector: format!("type={TOKEN_TYPE}"),
                ..Default::default()
            })
            .await
            .map_err(|s| self.server_error(s, "secrets", ""))?;
        let mut rows = vec![vec![
            "TOKEN-ID".to_string(),
            "TTL".into(),
            "EXPIRES".into(),
            "USAGES".into(),
            "DESCRIPTION".into(),
        ]];
        let now = SystemTime::now();
        for s in secrets.items {
            let field = |k: &str| {
                s.data
                    .get(k)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            let expires = field("expiration");
            let ttl = if expires.is_empty() {
                "<forever>".to_string()
            } else {
                match humantime::parse_rfc3339_weak(expires.trim_end_matches('Z')) {
                    Ok(at) => match at.duration_since(now) {
                        Ok(left) => table::human(left),
                        Err(_) => "<invalid>".into(),
                    },
                    Err(_) => "<invalid>".into(),
                }
            };
            let usages: Vec<&str> = ["authentication", "signing"]
                .into_iter()
                .filter(|u| field(&format!("usage-bootstrap-{u}")) == "true")
                .collect();
            rows.push(vec![
                field("token-id"),
                ttl,
                if expires.is_empty() {
                    "<never>".into()
                } else {
                    expires
                },
                usages.join(","),
                if field("description").is_empty() {
                    "<none>".into()
                } else {
                    field("description")
                },
            ]);
        }
        print!("{}", table::render(&rows));
        Ok(())
    }

    /// Deletes bootstrap tokens: they stop working at once.
    ///
    /// # Errors
    /// A token that does not exist (after deleting the others).
    pub async fn token_delete(&self, tokens: &[String]) -> Result<()> {
        let mut failed = Vec::new();
        for token in tokens {
            let id = token_id(token);
            let name = format!("{PREFIX}{id}");
            match self
                .tokens()
                .delete(DeleteRequest {
                    namespace: NAMESPACE.into(),
                    name: name.clone(),
                    ..Default::default()
                })
                .await
            {
                Ok(_) => println!("bootstrap token {id:?} deleted"),
                Err(s) => failed.push(self.server_error(s, "secret", &name).0),
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(CtlError(failed.join("\n")))
        }
    }

    /// Prints who the server takes the caller for.
    ///
    /// # Errors
    /// The server refused or cannot be reached.
    pub async fn whoami(&self) -> Result<()> {
        let user = IdentityClient::new(self.channel.clone())
            .who_am_i(WhoAmIRequest {})
            .await
            .map_err(|s| self.server_error(s, "", ""))?
            .into_inner();
        let rows = vec![
            vec!["ATTRIBUTE".to_string(), "VALUE".into()],
            vec!["Username".into(), user.username],
            vec!["Groups".into(), format!("[{}]", user.groups.join(" "))],
        ];
        print!("{}", table::render(&rows));
        Ok(())
    }

    /// Prints `yes` or `no`: whether the caller may `verb` `resource`
    /// (`pods`, `pods/log`, `deployments.apps`) named `name`, in the
    /// namespace of the command.
    ///
    /// # Errors
    /// The server refused or cannot be reached.
    pub async fn can_i(&self, verb: &str, resource: &str, name: &str) -> Result<bool> {
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (resource, None),
        };
        let (plural, group, namespaced) = match kinds::find(resource) {
            Some(k) => {
                let info = k.info();
                (
                    info.plural.to_string(),
                    info.group().to_string(),
                    info.namespaced,
                )
            }
            None => match resource.split_once('.') {
                Some((r, g)) => (r.to_string(), g.to_string(), true),
                None => (resource.to_string(), String::new(), true),
            },
        };
        let full = match subresource {
            Some(sub) => format!("{plural}/{sub}"),
            None => plural,
        };
        let status = IdentityClient::new(self.channel.clone())
            .can_i(AccessReview {
                verb: verb.into(),
                resource: full,
                group,
                namespace: if namespaced {
                    self.namespace.clone()
                } else {
                    String::new()
                },
                name: name.into(),
            })
            .await
            .map_err(|s| self.server_error(s, "", ""))?
            .into_inner();
        println!("{}", if status.allowed { "yes" } else { "no" });
        Ok(status.allowed)
    }

    /// Prints everything the caller may do in the command's namespace,
    /// as `kubectl auth can-i --list` does: one row per resource (with
    /// its group) or path, the verbs of rules on the same thing merged.
    ///
    /// # Errors
    /// The server refused or cannot be reached.
    pub async fn can_i_list(&self) -> Result<()> {
        let status = IdentityClient::new(self.channel.clone())
            .rules_review(RulesReviewRequest {
                namespace: self.namespace.clone(),
            })
            .await
            .map_err(|s| self.server_error(s, "", ""))?
            .into_inner();
        print!("{}", table::render(&access_rows(&status)));
        if status.incomplete {
            eprintln!(
                "warning: the list may be incomplete: some of what you may do is decided by more than rules{}",
                if status.evaluation_error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", status.evaluation_error)
                }
            );
        }
        Ok(())
    }
}

/// kubectl's `auth can-i --list` rows (header first): each rule broken
/// down to one resource and group, rules on the same resource and names
/// merged, sorted.
fn access_rows(status: &RulesReviewStatus) -> Vec<Vec<String>> {
    use std::collections::BTreeMap;
    let list = |items: &[String]| format!("[{}]", items.join(" "));
    // (resource cell, names) → verbs, and path rows.
    let mut resources: BTreeMap<(String, Vec<String>), Vec<String>> = BTreeMap::new();
    for rule in &status.resource_rules {
        for group in &rule.api_groups {
            for resource in &rule.resources {
                let (name, sub) = match resource.split_once('/') {
                    Some((n, s)) => (n, Some(s)),
                    None => (resource.as_str(), None),
                };
                let mut cell = name.to_string();
                if !group.is_empty() {
                    cell = format!("{cell}.{group}");
                }
                if let Some(sub) = sub {
                    cell = format!("{cell}/{sub}");
                }
                let verbs = resources
                    .entry((cell, rule.resource_names.clone()))
                    .or_default();
                for verb in &rule.verbs {
                    if !verbs.contains(verb) {
                        verbs.push(verb.clone());
                    }
                }
            }
        }
    }
    let mut paths: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for rule in &status.non_resource_rules {
        for path in &rule.non_resource_urls {
            let verbs = paths.entry(path.clone()).or_default();
            for verb in &rule.verbs {
                if !verbs.contains(verb) {
                    verbs.push(verb.clone());
                }
            }
        }
    }
    let mut rows = vec![vec![
        "Resources".to_string(),
        "Non-Resource URLs".into(),
        "Resource Names".into(),
        "Verbs".into(),
    ]];
    for ((cell, names), verbs) in resources {
        rows.push(vec![cell, "[]".into(), list(&names), list(&verbs)]);
    }
    for (path, verbs) in paths {
        rows.push(vec![
            String::new(),
            list(&[path]),
            "[]".into(),
            list(&verbs),
        ]);
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_secret_reads_like_kubeadms() {
        let s = token_secret(
            "abcdef",
            "0123456789abcdef",
            Some(Duration::from_secs(3600)),
            "n1",
        );
        let meta = skiff::Resource::metadata(&s).unwrap();
        assert_eq!(meta.name, "bootstrap-token-abcdef");
        assert_eq!(meta.namespace, "kube-system");
        assert_eq!(s.r#type, "bootstrap.kubernetes.io/token");
        assert_eq!(s.string_data["token-secret"], "0123456789abcdef");
        assert!(s.string_data["expiration"].ends_with('Z'));
        assert_eq!(token_id("abcdef.0123456789abcdef"), "abcdef");
        assert_eq!(token_id("abcdef"), "abcdef");
    }
}
