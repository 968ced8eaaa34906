//! The iproute2 commands the pod network runs (`ip`, `bridge`), with
//! JSON output where it reads state back.

use std::net::Ipv4Addr;

use serde_json::Value;

use super::Uplink;

/// Runs `ip ARGS`; its stdout.
///
/// # Errors
/// The command is missing or refused (its stderr).
pub async fn run(args: &[&str]) -> Result<String, String> {
    command("ip", args).await
}

/// Runs `bridge ARGS`; its stdout.
///
/// # Errors
/// As [`run`].
pub async fn bridge(args: &[&str]) -> Result<String, String> {
    command("bridge", args).await
}

async fn command(program: &str, args: &[&str]) -> Result<String, String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("running {program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs a JSON-printing command (`-j` first): the array it printed.
async fn json(program: &str, args: &[&str]) -> Result<Vec<Value>, String> {
    let out = command(program, args).await?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str::<Vec<Value>>(&out)
        .map_err(|e| format!("{program} {}: unreadable output: {e}", args.join(" ")))
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The interface holding `address`, and its MTU.
///
/// # Errors
/// No interface holds it.
pub async fn uplink_of(address: Ipv4Addr) -> Result<Uplink, String> {
    let links = json("ip", &["-j", "addr", "show"]).await?;
    let wanted = address.to_string();
    links
        .iter()
        .find(|l| {
            l.get("addr_info")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|i| text(i, "local") == wanted))
        })
        .map(|l| Uplink {
            name: text(l, "ifname").to_string(),
            mtu: l.get("mtu").and_then(Value::as_u64).unwrap_or(1500) as u32,
        })
        .ok_or_else(|| {
            format!("no interface of this host has the node address {address} (give --node-ip one of this host's addresses)")
        })
}

/// The address this host's default route leaves from: its source
/// address, else the primary IPv4 address of its interface (the first
/// next hop's, for a multipath route); None without a default route or
/// iproute2. Reads the routing table only.
pub async fn default_route_address() -> Option<Ipv4Addr> {
    let routes = json("ip", &["-j", "-4", "route", "show", "default"])
        .await
        .ok()?;
    let route = routes.first()?;
    if let Ok(source) = text(route, "prefsrc").parse() {
        return Some(source);
    }
    let dev = match text(route, "dev") {
        "" => route
            .get("nexthops")?
            .as_array()?
            .first()
            .map(|hop| text(hop, "dev").to_string())?,
        dev => dev.to_string(),
    };
    let links = json("ip", &["-j", "-4", "addr", "show", "dev", &dev])
        .await
        .ok()?;
    links
        .first()?
        .get("addr_info")?
        .as_array()?
        .iter()
        .filter(|a| a.get("secondary").and_then(Value::as_bool) != Some(true))
        .find_map(|a| text(a, "local").parse().ok())
}

/// The bridge `name` exists, is up, has `mtu` and holds `address` (a
/// CIDR).
///
/// # Errors
/// The kernel refused.
pub async fn ensure_bridge(name: &str, address: &str, mtu: u32) -> Result<(), String> {
    if run(&["link", "show", name]).await.is_err() {
        run(&["link", "add", name, "type", "bridge"]).await?;
    }
    run(&["link", "set", name, "mtu", &mtu.to_string()]).await?;
    run(&["addr", "replace", address, "dev", name]).await?;
    run(&["link", "set", name, "up"]).await?;
    Ok(())
}

/// The VXLAN device `name` (VNI `vni`, from `local` over `uplink`, port
/// `port`, no learning: peers are programmed), up with `mtu`; made again
/// when it exists with other parameters. Returns its MAC address.
///
/// # Errors
/// The kernel refused.
pub async fn ensure_vxlan(
    name: &str,
    vni: u32,
    local: Ipv4Addr,
    uplink: &str,
    port: u16,
    mtu: u32,
) -> Result<String, String> {
    let existing = json("ip", &["-j", "-d", "link", "show", name]).await.ok();
    let fits = existing.as_ref().and_then(|l| l.first()).is_some_and(|l| {
        let data = &l["linkinfo"]["info_data"];
        data.get("id").and_then(Value::as_u64) == Some(u64::from(vni))
            && text(data, "local") == local.to_string()
            && data.get("port").and_then(Value::as_u64) == Some(u64::from(port))
            && text(data, "link") == uplink
    });
    if existing.is_some() && !fits {
        run(&["link", "del", name]).await?;
    }
    if !fits {
        run(&[
            "link",
            "add",
            name,
            "type",
            "vxlan",
            "id",
            &vni.to_string(),
            "local",
            &local.to_string(),
            "dev",
            uplink,
            "dstport",
            &port.to_string(),
            "nolearning",
        ])
        .await?;
    }
    run(&["link", "set", name, "mtu", &mtu.to_string()]).await?;
    run(&["link", "set", name, "up"]).await?;
    let shown = json("ip", &["-j", "link", "show", name]).await?;
    shown
        .first()
        .map(|l| text(l, "address").to_string())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| format!("{name} has no MAC address"))
}

/// A route to another node's block.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The block.
    pub dst: String,
    /// Via.
    pub gateway: String,
    /// Out of.
    pub dev: String,
    /// The gateway is taken as on the link (VXLAN).
    pub onlink: bool,
}

/// The routing protocol number marking Skiff's routes, so they are found
/// again (and removed when their node goes) after a restart.
pub const ROUTE_PROTO: &str = "220";

/// Skiff's routes now.
///
/// # Errors
/// `ip` failed.
pub async fn routes() -> Result<Vec<Route>, String> {
    Ok(json("ip", &["-j", "route", "show", "proto", ROUTE_PROTO])
        .await?
        .iter()
        .map(|r| Route {
            dst: text(r, "dst").to_string(),
            gateway: text(r, "gateway").to_string(),
            dev: text(r, "dev").to_string(),
            onlink: r
                .get("flags")
                .and_then(Value::as_array)
                .is_some_and(|f| f.iter().any(|f| f == "onlink")),
        })
        .collect())
}

/// Adds or replaces `route`.
///
/// # Errors
/// The kernel refused (an off-link gateway, for one).
pub async fn replace_route(route: &Route) -> Result<(), String> {
    let mut args = vec![
        "route",
        "replace",
        &route.dst,
        "via",
        &route.gateway,
        "dev",
        &route.dev,
        "proto",
        ROUTE_PROTO,
    ];
    if route.onlink {
        args.push("onlink");
    }
    run(&args).await.map(drop)
}

/// Removes Skiff's route to `dst`.
///
/// # Errors
/// The kernel refused.
pub async fn delete_route(dst: &str) -> Result<(), String> {
    run(&["route", "del", dst, "proto", ROUTE_PROTO])
        .await
        .map(drop)
}

/// The permanent neighbour entries on `dev`: (address, MAC).
///
/// # Errors
/// `ip` failed.
pub async fn neighbours(dev: &str) -> Result<Vec<(String, String)>, String> {
    Ok(json(
        "ip",
        &["-j", "neigh", "show", "dev", dev, "nud", "permanent"],
    )
    .await?
    .iter()
    .map(|n| (text(n, "dst").to_string(), text(n, "lladdr").to_string()))
    .collect())
}

/// The forwarding entries on VXLAN device `dev` that send to a peer:
/// (MAC, peer address).
///
/// # Errors
/// `bridge` failed.
pub async fn fdb(dev: &str) -> Result<Vec<(String, String)>, String> {
    Ok(json("bridge", &["-j", "fdb", "show", "dev", dev])
        .await?
        .iter()
        .filter(|e| !text(e, "dst").is_empty())
        .map(|e| (text(e, "mac").to_string(), text(e, "dst").to_string()))
        .collect())
}
