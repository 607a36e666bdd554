//! The plan file: its TOML schema (docs/PLAN.md), read with serde (`deny_unknown_fields`
//! everywhere) and checked into a [`Desired`] state. Every refusal names its place in the
//! file as `FILE:LINE:COLUMN` (from the `toml` crate's spans). Pure: no AWS here; what
//! needs AWS (images resolving, what exists) is checked in [`super`] before any change.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::aws::Region;
use crate::engine::error::Error;
use crate::engine::library::{Library, Via};
use crate::engine::traffic::plan::Shift;
use crate::engine::validate;
use crate::engine::values::{AmiRef, SwarmName, Version};

/// The longest `bake` a plan may give a weighted step: one day, as `--bake`.
const MAX_BAKE: Duration = Duration::from_secs(24 * 3600);

/// A place in a plan file: `FILE:LINE:COLUMN`, both 1-based, the column in characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A plan file's text and the name it is shown by.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    /// The place of byte offset `span.start`.
    fn place(&self, span: Range<usize>) -> Place {
        let at = span.start.min(self.text.len());
        let before = &self.text[..at];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Place { file: self.file.to_string(), line, column }
    }

    /// A usage error (exit 2) at `span`: `FILE:LINE:COLUMN: what`.
    fn bad(&self, span: Range<usize>, what: impl std::fmt::Display) -> anyhow::Error {
        Error::Invalid(format!("{}: {what}", self.place(span))).into()
    }
}

// ---- The schema, as written (docs/PLAN.md). ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchema {
    swarm: Spanned<String>,
    #[serde(default)]
    region: Option<Spanned<String>>,
    #[serde(default)]
    networks: BTreeMap<Spanned<String>, Spanned<NetworkSchema>>,
    base: Spanned<BaseSchema>,
    #[serde(default)]
    metrics: Option<Spanned<MetricsSchema>>,
    #[serde(default)]
    roles: BTreeMap<Spanned<String>, Spanned<RoleSchema>>,
    #[serde(default)]
    bees: BTreeMap<Spanned<String>, Spanned<BeeRegionSchema>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetworkSchema {
    #[serde(default)]
    region: Option<Spanned<String>>,
    #[serde(default)]
    cidr: Option<Spanned<String>>,
    #[serde(default)]
    azs: Option<Spanned<u8>>,
    #[serde(default)]
    nat: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaseSchema {
    network: Spanned<String>,
    #[serde(default)]
    allow_cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    certificate_arn: Option<Spanned<String>>,
    #[serde(default)]
    broker_certificate_arn: Option<Spanned<String>>,
    #[serde(default)]
    broker_dns_name: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSchema {
    name: Spanned<String>,
    network: Spanned<String>,
    image: Spanned<String>,
    #[serde(default)]
    instance_type: Option<Spanned<String>>,
    #[serde(default)]
    allow_cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    certificate_arn: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleSchema {
    image: Spanned<String>,
    #[serde(default)]
    instance_type: Option<Spanned<String>>,
    #[serde(default)]
    size: Option<Spanned<i64>>,
    #[serde(default)]
    version: Option<Spanned<String>>,
    #[serde(default)]
    after: Vec<Spanned<String>>,
    #[serde(default)]
    shift: Option<Spanned<String>>,
    #[serde(default)]
    bake: Option<Spanned<String>>,
    #[serde(default)]
    retire: bool,
    #[serde(default)]
    targets: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BeeRegionSchema {
    network: Spanned<String>,
    #[serde(default)]
    image: Option<Spanned<String>>,
    #[serde(default)]
    instance_type: Option<Spanned<String>>,
    #[serde(default)]
    size: Option<Spanned<i64>>,
    #[serde(default)]
    targets: Vec<Spanned<String>>,
}

// ---- The checked plan. ----

/// A network the plan wants (`[networks.NAME]`).
#[derive(Debug, Clone)]
pub struct NetworkWant {
    pub name: String,
    pub region: Region,
    /// The VPC's block, a /16 (default `10.0.0.0/16`).
    pub cidr: String,
    /// Availability zones, 2 or 3 (default 2).
    pub azs: u8,
    /// A NAT gateway for the private subnets (default true).
    pub nat: bool,
    pub place: Place,
}

/// The swarm's base stack options (`[base]`).
#[derive(Debug, Clone)]
pub struct BaseWant {
    /// The home network it lives in (a `[networks.NAME]` in the home region).
    pub network: String,
    /// Admin ranges allowed SSH (up to 4).
    pub allow_cidrs: Vec<String>,
    /// HTTPS on 443 with this ACM certificate; `None`: HTTP on 80.
    pub certificate_arn: Option<String>,
    /// The broker NLB ends MQTT's TLS (8883) with this ACM certificate; `None`: the brokers
    /// end it with the swarm's own CA (docs/MULTI-REGION.md 8.1).
    pub broker_certificate_arn: Option<String>,
    /// The name on `broker_certificate_arn` the clients connect to; set exactly when it is.
    pub broker_dns_name: Option<String>,
    /// Where `certificate_arn` and `broker_certificate_arn` are written (ACM's refusals point there).
    pub certificate_place: Option<Place>,
    pub broker_certificate_place: Option<Place>,
    pub place: Place,
}

/// The metrics box (`[metrics]`), in the home region.
#[derive(Debug, Clone)]
pub struct MetricsWant {
    pub name: String,
    pub network: String,
    pub image: AmiRef,
    pub image_place: Place,
    /// Default `t3.small`, as `tyrell metrics create`.
    pub instance_type: String,
    pub allow_cidrs: Vec<String>,
    /// Grafana over HTTPS through its own ALB with this ACM certificate; `None`: HTTP on 3000.
    pub certificate_arn: Option<String>,
    /// Where `certificate_arn` is written.
    pub certificate_place: Option<Place>,
    pub place: Place,
}

/// A role's live version as the plan wants it (`[roles.ROLE]`), in the home region.
#[derive(Debug, Clone)]
pub struct RoleWant {
    pub role: String,
    pub image: AmiRef,
    pub image_place: Place,
    /// The instance type (default: the role's, from its manifest).
    pub instance_type: String,
    /// Instances (default: the role's).
    pub size: i32,
    /// The id the live version must have; `None`: any id, a new one generated when a
    /// new version is needed.
    pub version: Option<Version>,
    /// Roles whose switch goes before this one's (dependency order).
    pub after: Vec<String>,
    /// How traffic moves to a new version when a live one exists (a first release moves
    /// all at once).
    pub shift: Shift,
    /// How long each weighted step is held while health is watched.
    pub bake: Duration,
    /// Scale the old version to 0 after a switch (roles without inbound traffic always do).
    pub retire: bool,
    /// The router's watch list (bees only), kept in the plan; applied by hand (docs/PLAN.md).
    pub targets: Option<Vec<String>>,
    pub place: Place,
}

/// A bee fleet in another region (`[bees.REGION]`).
#[derive(Debug, Clone)]
pub struct BeeRegionWant {
    pub region: Region,
    pub network: String,
    pub image: AmiRef,
    pub image_place: Place,
    pub instance_type: String,
    pub size: i32,
    pub targets: Vec<String>,
    pub place: Place,
}

/// A plan file, checked: every name, value and reference is valid, and roles are in
/// dependency order (each after the roles its `after` names; ties in the library's order).
#[derive(Debug, Clone)]
pub struct Desired {
    /// The file as named on the command line.
    pub file: String,
    pub swarm: SwarmName,
    /// The home region: the file's `region`, else the command line's.
    pub region: Region,
    pub networks: Vec<NetworkWant>,
    pub base: BaseWant,
    pub metrics: Option<MetricsWant>,
    pub roles: Vec<RoleWant>,
    pub bees: Vec<BeeRegionWant>,
}

/// Reads a plan file's text (`file`: the name to show in errors) into a checked
/// [`Desired`]. `home`: the command line's region (the file's `region` wins).
///
/// Errors: every refusal is [`Error::Invalid`] (exit 2), one sentence starting with
/// `FILE:LINE:COLUMN:` — TOML syntax, an unknown key (serde `deny_unknown_fields`), a
/// missing key, a bad name, region, CIDR, image, size, shift or duration, a reference to a
/// network or role the plan does not have, a network in the wrong region, a cycle in `after`.
pub fn parse(file: &str, text: &str, home: &Region, lib: &Library) -> anyhow::Result<Desired> {
    let src = Source { file, text };
    let raw: FileSchema = toml::from_str(text).map_err(|e| {
        let msg = e.message().trim_end_matches('\n').replace('\n', " ");
        match e.span() {
            Some(span) if msg == "duplicate key" => {
                let key = text.get(span.clone()).unwrap_or_default().to_string();
                src.bad(span, format!("duplicate key `{key}`: a key or table appears once in a plan"))
            }
            Some(span) => src.bad(span, msg),
            None => Error::Invalid(format!("{file}: {msg}")).into(),
        }
    })?;
    let valid = |s: &Spanned<String>, check: &dyn Fn(&str) -> Result<(), validate::Invalid>| {
        check(s.get_ref()).map_err(|e| src.bad(s.span(), e.0))
    };
    let region_of = |s: &Spanned<String>| -> anyhow::Result<Region> {
        s.get_ref().parse::<Region>().map_err(|e| src.bad(s.span(), e))
    };

    let swarm: SwarmName =
        raw.swarm.get_ref().parse().map_err(|e: validate::Invalid| src.bad(raw.swarm.span(), e.0))?;
    let region = match &raw.region {
        Some(r) => region_of(r)?,
        None => home.clone(),
    };

    // Networks.
    let mut networks = Vec::new();
    for (name, n) in &raw.networks {
        valid(name, &|s| validate::name("network", s))?;
        let spec = n.get_ref();
        let cidr = match &spec.cidr {
            Some(c) => {
                valid(c, &validate::vpc_cidr)?;
                c.get_ref().clone()
            }
            None => "10.0.0.0/16".into(),
        };
        let azs = match &spec.azs {
            Some(a) if !(2..=3).contains(a.get_ref()) => {
                return Err(
                    src.bad(a.span(), format!("azs = {}: a network spans 2 or 3 availability zones", a.get_ref()))
                )
            }
            Some(a) => *a.get_ref(),
            None => 2,
        };
        networks.push(NetworkWant {
            name: name.get_ref().clone(),
            region: match &spec.region {
                Some(r) => region_of(r)?,
                None => region.clone(),
            },
            cidr,
            azs,
            nat: spec.nat.unwrap_or(true),
            place: src.place(name.span()),
        });
    }
    let network_ref = |r: &Spanned<String>, want: &Region, what: &str| -> anyhow::Result<String> {
        let Some(n) = networks.iter().find(|n| &n.name == r.get_ref()) else {
            let known: Vec<&str> = networks.iter().map(|n| n.name.as_str()).collect();
            return Err(src.bad(
                r.span(),
                format!(
                    "{what} names network {:?}, which the plan does not define (networks: {})",
                    r.get_ref(),
                    if known.is_empty() { "none; add a [networks.NAME] table".into() } else { known.join(", ") }
                ),
            ));
        };
        if &n.region != want {
            return Err(src.bad(
                r.span(),
                format!(
                    "{what} is in {want}, but network {} is in {} (a network serves its own region)",
                    n.name, n.region
                ),
            ));
        }
        Ok(n.name.clone())
    };
    let cidrs = |list: &[Spanned<String>]| -> anyhow::Result<Vec<String>> {
        if let Some(extra) = list.get(4) {
            return Err(src.bad(extra.span(), "allow_cidrs takes at most 4 ranges"));
        }
        list.iter().map(|c| valid(c, &validate::admin_cidr).map(|()| c.get_ref().clone())).collect()
    };

    // The base stack.
    let b = raw.base.get_ref();
    let acm_arn = |key: &str, a: &Option<Spanned<String>>| -> anyhow::Result<Option<String>> {
        match a {
            Some(a) if a.get_ref().is_empty() => Ok(None),
            Some(a) => valid(a, &|s| validate::certificate_arn(key, s)).map(|()| Some(a.get_ref().clone())),
            None => Ok(None),
        }
    };
    let broker_certificate_arn = acm_arn("broker_certificate_arn", &b.broker_certificate_arn)?;
    let broker_dns_name = match (&broker_certificate_arn, &b.broker_dns_name) {
        (Some(_), Some(n)) => {
            valid(n, &|s| validate::dns_name("broker_dns_name", s))?;
            Some(n.get_ref().clone())
        }
        (None, Some(n)) => {
            return Err(src.bad(n.span(), "broker_dns_name needs broker_certificate_arn (the certificate on that name)"))
        }
        (Some(_), None) => {
            return Err(src.bad(
                raw.base.span(),
                "broker_certificate_arn needs broker_dns_name: the name on the certificate that the clients connect to",
            ))
        }
        (None, None) => None,
    };
    let base = BaseWant {
        broker_certificate_arn,
        broker_dns_name,
        network: network_ref(&b.network, &region, "base")?,
        allow_cidrs: cidrs(&b.allow_cidrs)?,
        certificate_arn: acm_arn("certificate_arn", &b.certificate_arn)?,
        certificate_place: b.certificate_arn.as_ref().map(|a| src.place(a.span())),
        broker_certificate_place: b.broker_certificate_arn.as_ref().map(|a| src.place(a.span())),
        place: src.place(raw.base.span()),
    };

    let image = |s: &Spanned<String>| -> anyhow::Result<AmiRef> {
        s.get_ref().parse::<AmiRef>().map_err(|e| src.bad(s.span(), format!("image: {}", e.0)))
    };
    let instance_type = |s: &Option<Spanned<String>>, default: &str| -> anyhow::Result<String> {
        match s {
            Some(t) => valid(t, &validate::instance_type).map(|()| t.get_ref().clone()),
            None => Ok(default.to_string()),
        }
    };

    // The metrics box.
    let metrics = match &raw.metrics {
        None => None,
        Some(m) => {
            let spec = m.get_ref();
            valid(&spec.name, &|s| validate::name("metrics box", s))?;
            if spec.name.get_ref() == swarm.as_str() || networks.iter().any(|n| &n.name == spec.name.get_ref()) {
                return Err(src.bad(
                    spec.name.span(),
                    format!(
                        "metrics name {:?} is taken by the swarm or a network (stack names share one namespace)",
                        spec.name.get_ref()
                    ),
                ));
            }
            Some(MetricsWant {
                name: spec.name.get_ref().clone(),
                network: network_ref(&spec.network, &region, "metrics")?,
                image: image(&spec.image)?,
                image_place: src.place(spec.image.span()),
                instance_type: instance_type(&spec.instance_type, "t3.small")?,
                allow_cidrs: cidrs(&spec.allow_cidrs)?,
                certificate_arn: acm_arn("certificate_arn", &spec.certificate_arn)?,
                certificate_place: spec.certificate_arn.as_ref().map(|a| src.place(a.span())),
                place: src.place(m.span()),
            })
        }
    };
    if let Some(n) = raw.networks.keys().find(|n| n.get_ref() == swarm.as_str()) {
        return Err(src.bad(
            n.span(),
            format!("network {:?} has the swarm's name (stack names share one namespace)", n.get_ref()),
        ));
    }

    // Roles.
    let mut roles = Vec::new();
    let size_of = |s: &Option<Spanned<i64>>, role: &str, default: i32| -> anyhow::Result<i32> {
        match s {
            None => Ok(default),
            Some(n) => {
                let v = i32::try_from(*n.get_ref())
                    .map_err(|_| src.bad(n.span(), format!("size {} is out of range", n.get_ref())))?;
                validate::role_size(role, v).map_err(|e| src.bad(n.span(), e.0.replace(" (-s/--size)", "")))?;
                Ok(v)
            }
        }
    };
    let targets_of = |list: &[Spanned<String>]| -> anyhow::Result<Vec<String>> {
        list.iter()
            .map(|t| {
                let s = t.get_ref();
                if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '"' || c.is_control()) {
                    Err(src
                        .bad(t.span(), format!("target {s:?}: a target is a host name or an address, without spaces")))
                } else {
                    Ok(s.clone())
                }
            })
            .collect()
    };
    for (name, r) in &raw.roles {
        let Some(m) = lib.roles().iter().find(|m| &m.role == name.get_ref()) else {
            let known: Vec<&str> = lib.roles().iter().map(|m| m.role.as_str()).collect();
            return Err(
                src.bad(name.span(), format!("unknown role {:?} (roles: {})", name.get_ref(), known.join(", ")))
            );
        };
        let spec = r.get_ref();
        let version = match &spec.version {
            Some(v) => Some(v.get_ref().parse::<Version>().map_err(|e: validate::Invalid| src.bad(v.span(), e.0))?),
            None => None,
        };
        let shift = match &spec.shift {
            Some(s) => {
                let shift: Shift =
                    s.get_ref().parse().map_err(|e: String| src.bad(s.span(), e.replace("--shift ", "shift ")))?;
                if shift.is_weighted() && m.traffic.via != Via::Alb {
                    return Err(src.bad(
                        s.span(),
                        format!("shift {shift}: weighted steps need the ALB, and {} switches in one step", m.role),
                    ));
                }
                shift
            }
            None => Shift::AllAtOnce,
        };
        let bake = match &spec.bake {
            Some(b) => match common::duration::parse(b.get_ref()) {
                Ok(d) if d <= MAX_BAKE => d,
                Ok(_) => return Err(src.bad(b.span(), format!("bake {}: give 0 to 24h", b.get_ref()))),
                Err(e) => return Err(src.bad(b.span(), format!("invalid bake: {e}"))),
            },
            None => Duration::from_secs(60),
        };
        let targets = match &spec.targets {
            Some(t) if m.role != "bee" => {
                return Err(src
                    .bad(t.span(), format!("targets belong to the bees (the router's watch list), not to {}", m.role)))
            }
            Some(t) => Some(targets_of(t.get_ref())?),
            None => None,
        };
        roles.push(RoleWant {
            role: m.role.clone(),
            image: image(&spec.image)?,
            image_place: src.place(spec.image.span()),
            instance_type: instance_type(&spec.instance_type, &m.instance_type)?,
            size: size_of(&spec.size, &m.role, m.size)?,
            version,
            after: spec.after.iter().map(|a| a.get_ref().clone()).collect(),
            shift,
            bake,
            retire: spec.retire,
            targets,
            place: src.place(name.span()),
        });
    }
    // `after` names roles of this plan, without a cycle.
    for (name, r) in &raw.roles {
        for a in &r.get_ref().after {
            if !raw.roles.keys().any(|k| k.get_ref() == a.get_ref()) {
                return Err(src.bad(
                    a.span(),
                    format!("roles.{}.after names {:?}, which is not a role of this plan", name.get_ref(), a.get_ref()),
                ));
            }
        }
    }
    let order = dependency_order(&roles, lib).map_err(|cycle| {
        let first = &cycle[0];
        let at = raw
            .roles
            .iter()
            .find(|(k, _)| k.get_ref() == first)
            .and_then(|(_, r)| r.get_ref().after.iter().find(|a| a.get_ref() == &cycle[1]))
            .map(|a| a.span())
            .unwrap_or(0..0);
        src.bad(
            at,
            format!("roles.{first}.after makes a cycle: {} (a role cannot wait for itself)", cycle.join(" -> ")),
        )
    })?;
    let roles: Vec<RoleWant> = order.into_iter().map(|i| roles[i].clone()).collect();

    // Bee fleets in other regions.
    let mut bees = Vec::new();
    let home_bee = roles.iter().find(|r| r.role == "bee");
    for (key, b) in &raw.bees {
        let r = region_of(key)?;
        if r == region {
            return Err(
                src.bad(key.span(), format!("bees.{r} is the home region: the home region's bees are [roles.bee]"))
            );
        }
        let spec = b.get_ref();
        let bee = lib.role("bee").ok_or_else(|| src.bad(key.span(), "the role library has no bee role"))?;
        let (img, img_place) = match (&spec.image, home_bee) {
            (Some(i), _) => (image(i)?, src.place(i.span())),
            (None, Some(h)) => (h.image.clone(), h.image_place.clone()),
            (None, None) => {
                return Err(src.bad(b.span(), format!("bees.{r} needs an image (or a [roles.bee] image to share)")))
            }
        };
        let network = network_ref(&spec.network, &r, &format!("bees.{r}"))?;
        // What `tyrell stacks add-region` would refuse is refused here, at its place:
        // bees outside the home region reach the broker (over TLS, always) through a VPC
        // peering, so the bee network needs a NAT gateway and the peered ranges must be
        // distinct (docs/MULTI-REGION.md 6).
        let net = networks
            .iter()
            .find(|n| n.name == network)
            .ok_or_else(|| src.bad(spec.network.span(), format!("bees.{r}: no network {network}")))?;
        if !net.nat {
            return Err(src.bad(
                spec.network.span(),
                format!("bees.{r}: network {network} has no NAT gateway (nat = false): bees need one for the pings and the AWS APIs"),
            ));
        }
        let home_net = networks
            .iter()
            .find(|n| n.name == base.network)
            .ok_or_else(|| src.bad(key.span(), format!("bees.{r}: no home network {}", base.network)))?;
        let mut others = vec![(format!("the home network {}", home_net.name), home_net.cidr.clone())];
        others.extend(
            bees.iter()
                .filter_map(|b: &BeeRegionWant| networks.iter().find(|n| n.name == b.network))
                .map(|n| (format!("network {} of bees.{}", n.name, n.region), n.cidr.clone())),
        );
        for (what, cidr) in others {
            if crate::engine::bee_region::overlap(&net.cidr, &cidr).unwrap_or(false) {
                return Err(src.bad(
                    spec.network.span(),
                    format!("bees.{r}: network {network} ({}) overlaps {what} ({cidr}): peered VPCs need distinct ranges, e.g. 10.N.0.0/16 per region", net.cidr),
                ));
            }
        }
        bees.push(BeeRegionWant {
            network,
            region: r,
            image: img,
            image_place: img_place,
            instance_type: instance_type(
                &spec.instance_type,
                home_bee.map_or(&bee.instance_type, |h| &h.instance_type),
            )?,
            size: size_of(&spec.size, "bee", home_bee.map_or(bee.size, |h| h.size))?,
            targets: targets_of(&spec.targets)?,
            place: src.place(key.span()),
        });
    }
    // Two networks with one name in one region would be one stack.
    let mut seen = BTreeSet::new();
    for n in &networks {
        if !seen.insert(n.name.clone()) {
            return Err(Error::Invalid(format!("{}: network {} is defined twice", n.place, n.name)).into());
        }
    }
    Ok(Desired { file: file.to_string(), swarm, region, networks, base, metrics, roles, bees })
}

/// Indexes of `roles` in dependency order: every role after those its `after` names,
/// ties in the library's order. Errors: a cycle, as the roles along it (first repeated last).
fn dependency_order(roles: &[RoleWant], lib: &Library) -> Result<Vec<usize>, Vec<String>> {
    let rank = |r: &str| lib.roles().iter().position(|m| m.role == r).unwrap_or(usize::MAX);
    let mut done: Vec<usize> = Vec::new();
    let mut left: Vec<usize> = (0..roles.len()).collect();
    left.sort_by_key(|&i| rank(&roles[i].role));
    while !left.is_empty() {
        let ready = left.iter().position(|&i| roles[i].after.iter().all(|a| done.iter().any(|&d| &roles[d].role == a)));
        match ready {
            Some(p) => done.push(left.remove(p)),
            None => {
                // Every role left waits for another left: walk `after` until one repeats.
                let mut path = vec![roles[left[0]].role.clone()];
                loop {
                    let cur = roles.iter().find(|r| r.role == *path.last().unwrap()).unwrap();
                    let next = cur.after.iter().find(|a| left.iter().any(|&i| &roles[i].role == *a)).unwrap().clone();
                    if let Some(at) = path.iter().position(|p| *p == next) {
                        let mut cycle = path[at..].to_vec();
                        cycle.push(next);
                        return Err(cycle);
                    }
                    path.push(next);
                }
            }
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lib() -> Library {
        Library::load().expect("the embedded role library")
    }

    fn home() -> Region {
        "eu-west-1".parse().unwrap()
    }

    const GOOD: &str = "swarm = \"sw1\"\n[networks.net1]\n[base]\nnetwork = \"net1\"\n[roles.router]\nimage = \"latest\"\nafter = [\"broker\"]\n[roles.broker]\nimage = \"ami-0123abcd\"\n";

    fn err(text: &str) -> String {
        format!("{:#}", parse("p.toml", text, &home(), &lib()).unwrap_err())
    }

    #[test]
    fn a_good_plan_reads_with_defaults_and_in_dependency_order() {
        let d = parse("p.toml", GOOD, &home(), &lib()).unwrap();
        assert_eq!((d.swarm.as_str(), d.region.to_string()), ("sw1", "eu-west-1".to_string()));
        let n = &d.networks[0];
        assert_eq!((n.name.as_str(), n.cidr.as_str(), n.azs, n.nat), ("net1", "10.0.0.0/16", 2, true));
        let roles: Vec<&str> = d.roles.iter().map(|r| r.role.as_str()).collect();
        assert_eq!(roles, ["broker", "router"], "the router waits for the broker");
        assert_eq!(d.roles[1].image, AmiRef::Latest);
        assert_eq!(d.roles[1].shift, Shift::AllAtOnce);
        assert!(d.metrics.is_none() && d.bees.is_empty());
    }

    #[test]
    fn places_are_line_and_column_of_the_offending_text() {
        let src = Source { file: "f", text: "a\nbcd\n\u{e9}x" };
        assert_eq!(src.place(0..1).to_string(), "f:1:1");
        assert_eq!(src.place(4..5).to_string(), "f:2:3");
        // Columns count characters, not bytes.
        assert_eq!(src.place(8..9).to_string(), "f:3:2");
        assert!(err(&GOOD.replace("[base]\n", "[base]\nvpc = 1\n")).starts_with("p.toml:4:1: unknown field `vpc`"));
        assert!(err(&GOOD.replace("after = [\"broker\"]", "after = [\"bee\"]")).starts_with("p.toml:7:10:"));
    }

    #[test]
    fn cycles_are_named_along_their_path() {
        let text = GOOD.replace("image = \"ami-0123abcd\"", "image = \"ami-0123abcd\"\nafter = [\"router\"]");
        let e = err(&text);
        assert!(e.starts_with("p.toml:10:10: roles.broker.after makes a cycle: broker -> router -> broker"), "{e}");
    }

    #[test]
    fn bee_regions_take_the_home_bees_defaults_and_their_own_network() {
        let tls = "network = \"net1\"\nbroker_certificate_arn = \"arn:aws:acm:eu-west-1:123456789012:certificate/0b1c\"\nbroker_dns_name = \"mqtt.example.org\"\n";
        let text = format!(
            "{}[roles.bee]\nimage = \"latest\"\nsize = 4\n[networks.far]\nregion = \"ap-south-1\"\ncidr = \"10.1.0.0/16\"\n[bees.ap-south-1]\nnetwork = \"far\"\n",
            GOOD.replace("network = \"net1\"\n", tls)
        );
        let d = parse("p.toml", &text, &home(), &lib()).unwrap();
        assert_eq!((d.bees[0].region.to_string(), d.bees[0].size), ("ap-south-1".to_string(), 4));
        let e = err(&text.replace("network = \"far\"", "network = \"net1\""));
        assert!(e.contains("bees.ap-south-1 is in ap-south-1, but network net1 is in eu-west-1"), "{e}");
        let e = err(&text.replace("[bees.ap-south-1]", "[bees.eu-west-1]"));
        assert!(e.contains("the home region's bees are [roles.bee]"), "{e}");
        // Without an ACM certificate the brokers end TLS themselves: a bee region is fine.
        let own = parse("p.toml", &text.replace(tls, "network = \"net1\"\n"), &home(), &lib()).unwrap();
        assert_eq!((own.bees.len(), own.base.broker_certificate_arn.clone()), (1, None));
        // What add-region would refuse, refused at its place in the file.
        let e = err(&text.replace("cidr = \"10.1.0.0/16\"", "cidr = \"10.0.0.0/16\""));
        assert!(
            e.starts_with("p.toml:19:11: bees.ap-south-1: network far (10.0.0.0/16) overlaps the home network net1"),
            "{e}"
        );
        let e = err(&text.replace("cidr = \"10.1.0.0/16\"", "cidr = \"10.1.0.0/16\"\nnat = false"));
        assert!(e.contains("bees.ap-south-1: network far has no NAT gateway"), "{e}");
        // Two bee regions on overlapping ranges.
        let two = format!("{text}[networks.far2]\nregion = \"sa-east-1\"\ncidr = \"10.1.0.0/16\"\n[bees.sa-east-1]\nnetwork = \"far2\"\n");
        let e = err(&two);
        assert!(e.contains("overlaps network far of bees.ap-south-1"), "{e}");
    }
}
