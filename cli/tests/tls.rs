//! Encrypted by default (issue 12 item 4, docs/MULTI-REGION.md 8): the real binary
//! against the emulator, everything read back through AWS.
//!
//! * With a broker certificate the broker NLB gets a TLS listener on 8883 (its policy and
//!   certificate), the swarm's MQTT clients are rendered with TLS to the certificate's
//!   name, the broker port is reachable from security groups only (no address range), and
//!   a broker switch moves both listeners.
//! * With an ALB certificate port 80 answers with a redirect to HTTPS.
//! * Without a broker certificate the brokers end TLS themselves with the swarm's own CA:
//!   the NLB passes 8883 through, nothing listens in plain text on it, the clients trust
//!   the CA from SSM; without an ALB certificate `stacks create` warns on stderr.
//! * A broker certificate that ACM does not hold, that is not issued, or that does not
//!   cover the name is refused before anything is made.
//!
//! The emulator turns every load balancer into an ALB, so the TLS listener reads back as
//! HTTPS there (roles/base/template.yaml, OnEmulator); cfn-lint and the policy check judge
//! the TLS form AWS gets. Egress rules are not modelled by the emulator (EMULATOR.md).

mod support;

use std::collections::BTreeSet;

use base64::Engine as _;
use support::*;

const POLICY: &str = "ELBSecurityPolicy-TLS13-1-2-2021-06";

async fn acm() -> aws_sdk_acm::Client {
    aws_sdk_acm::Client::new(&emulator().sdk().await)
}

/// A self-signed certificate for `names` in the emulator's ACM of the tests' region.
fn imported_certificate(names: &[&str]) -> String {
    support::imported_certificate(&emulator().region, names)
}

/// An ACM certificate requested for `name` and not yet validated (PENDING_VALIDATION).
fn pending_certificate(name: &str) -> String {
    block_on(async {
        let out = acm()
            .await
            .request_certificate()
            .domain_name(name)
            .validation_method(aws_sdk_acm::types::ValidationMethod::Dns)
            .send()
            .await
            .unwrap();
        out.certificate_arn().unwrap().to_string()
    })
}

/// A listener as read back: (port, protocol, SSL policy, certificate ARNs, load balancer).
struct Listener {
    port: i32,
    protocol: String,
    policy: Option<String>,
    certificates: Vec<String>,
    load_balancer: String,
    actions: Vec<aws_sdk_elasticloadbalancingv2::types::Action>,
}

fn listeners_of_lb_of(listener_arn: &str) -> Vec<Listener> {
    block_on(async {
        let elb = emulator().elb().await;
        let one = elb.describe_listeners().listener_arns(listener_arn).send().await.unwrap();
        let lb = one.listeners()[0].load_balancer_arn().unwrap().to_string();
        let all = elb.describe_listeners().load_balancer_arn(&lb).send().await.unwrap();
        all.listeners()
            .iter()
            .map(|l| Listener {
                port: l.port().unwrap(),
                protocol: l.protocol().unwrap().as_str().to_string(),
                policy: l.ssl_policy().map(str::to_string),
                certificates: l.certificates().iter().filter_map(|c| c.certificate_arn()).map(str::to_string).collect(),
                load_balancer: lb.clone(),
                actions: l.default_actions().to_vec(),
            })
            .collect()
    })
}

/// Every security group of a VPC.
fn groups_in(vpc: &str) -> Vec<String> {
    block_on(async {
        let ec2 = emulator().ec2().await;
        let f = aws_sdk_ec2::types::Filter::builder().name("vpc-id").values(vpc).build();
        let out = ec2.describe_security_groups().filters(f).send().await.unwrap();
        out.security_groups().iter().filter_map(|g| g.group_id()).map(str::to_string).collect()
    })
}

/// Fails naming the rule when any group of the VPC admits an MQTT port from an address range.
fn assert_mqtt_only_from_groups(vpc: &str) {
    for g in groups_in(vpc) {
        for (from, to, _, ranges) in ingress(&g) {
            let mqtt = from == -1 || [1883, 8883].iter().any(|p| (from..=to).contains(p));
            assert!(!mqtt || ranges.is_empty(), "{g} admits MQTT ports {from}-{to} from {ranges:?}");
        }
    }
}

/// The decoded user data of a role version's launch template.
fn user_data(stack: &str) -> String {
    let id = output(stack, "LaunchTemplateId");
    block_on(async {
        let ec2 = emulator().ec2().await;
        let out =
            ec2.describe_launch_template_versions().launch_template_id(id).versions("$Latest").send().await.unwrap();
        let data = out.launch_template_versions()[0].launch_template_data().unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data.user_data().unwrap()).unwrap()).unwrap()
    })
}

fn env_line<'a>(user_data: &'a str, key: &str) -> Option<&'a str> {
    user_data.lines().map(str::trim).find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn network() -> String {
    json(&["network", "create", &unique("tlsn")])["vpc_id"].as_str().unwrap().to_string()
}

#[test]
fn broker_tls_listener_alb_redirect_and_mqtt_only_from_groups() {
    let swarm = unique("tls");
    let mqtt = format!("mqtt.{swarm}.example.org");
    let cert = imported_certificate(&[&mqtt, "app.example.org"]);
    let vpc = network();
    let out = run(&[
        "stacks",
        "create",
        "-v",
        &vpc,
        "--certificate-arn",
        &cert,
        "--broker-certificate-arn",
        &cert,
        "--broker-dns-name",
        &mqtt,
        &swarm,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stacks create: {stderr}");
    assert!(!stderr.contains("WARNING"), "no warning with both certificates:\n{stderr}");

    // The outputs the clients are rendered from.
    let s = stack(&swarm).unwrap();
    assert_eq!(s.outputs["BrokerTls"], "true");
    assert_eq!(s.outputs["BrokerPort"], "8883");
    assert_eq!(s.outputs["BrokerHost"], mqtt);
    assert_ne!(s.outputs["BrokerNlbHost"], mqtt);
    let describe = ok(&["stacks", "describe", &swarm]);
    assert!(describe.contains(&format!("{mqtt}:8883")), "describe shows the TLS endpoint:\n{describe}");

    // The broker load balancer: 8883 with the policy and the certificate, beside the plain 1883.
    let nlb = listeners_of_lb_of(&s.outputs["BrokerTlsListenerArn"]);
    let tls = nlb.iter().find(|l| l.port == 8883).expect("a listener on 8883");
    assert_eq!(tls.protocol, "HTTPS", "the emulator's analogue of TLS (every load balancer is an ALB there)");
    assert_eq!(tls.policy.as_deref(), Some(POLICY));
    assert_eq!(tls.certificates, vec![cert.clone()]);
    let plain = listeners_of_lb_of(&s.outputs["BrokerListenerArn"]);
    assert_eq!(plain[0].load_balancer, tls.load_balancer, "both listeners are on the one broker NLB");
    assert_eq!(nlb.iter().map(|l| l.port).collect::<BTreeSet<_>>(), BTreeSet::from([1883, 8883]));

    // The ALB: 443 with the certificate, 80 a permanent redirect to it.
    let alb = listeners_of_lb_of(&s.outputs["AlbListenerArn"]);
    let https = alb.iter().find(|l| l.port == 443).expect("an HTTPS listener on 443");
    assert_eq!((https.protocol.as_str(), https.policy.as_deref()), ("HTTPS", Some(POLICY)));
    assert_eq!(https.certificates, vec![cert.clone()]);
    let http = alb.iter().find(|l| l.port == 80).expect("a listener on 80");
    let redirect = http.actions[0].redirect_config().expect("port 80 redirects");
    assert_eq!(http.actions[0].r#type().map(|t| t.as_str()), Some("redirect"));
    assert_eq!(redirect.protocol(), Some("HTTPS"));
    assert_eq!(redirect.port(), Some("443"));
    assert_eq!(redirect.status_code().map(|c| c.as_str()), Some("HTTP_301"));

    // Security groups: the NLB admits 8883 from the client groups and 1883 from the brokers
    // only; the brokers admit 1883 from the NLB and each other; no MQTT from any range.
    let o = &s.outputs;
    let nlb_sg = &o["NlbSecurityGroupId"];
    let mut rules = ingress(nlb_sg);
    rules.sort();
    let clients: BTreeSet<String> = ["RouterSecurityGroupId", "BeeSecurityGroupId", "IndexerSecurityGroupId"]
        .iter()
        .map(|k| o[*k].clone())
        .collect();
    let from = |port: i32| -> BTreeSet<String> {
        rules.iter().filter(|r| r.0 == port && r.1 == port).flat_map(|r| r.2.iter().cloned()).collect()
    };
    assert_eq!(from(8883), clients, "8883 from the router, bee and indexer groups: {rules:?}");
    assert_eq!(from(1883), BTreeSet::from([o["BrokerSecurityGroupId"].clone()]), "1883 from the brokers: {rules:?}");
    assert!(rules.iter().all(|r| [1883, 8883].contains(&r.0) && r.3.is_empty()), "nothing else: {rules:?}");
    let broker: Vec<Ingress> = ingress(&o["BrokerSecurityGroupId"]).into_iter().filter(|r| r.0 == 1883).collect();
    let broker_from: BTreeSet<String> = broker.iter().flat_map(|r| r.2.iter().cloned()).collect();
    assert_eq!(broker_from, BTreeSet::from([nlb_sg.clone(), o["BrokerSecurityGroupId"].clone()]));
    assert_mqtt_only_from_groups(&vpc);

    // The clients are rendered with TLS to the certificate's name; the broker listens in
    // plain text behind the NLB and finds other brokers through its plain listener.
    create("bees", &swarm, "v1", "1");
    create("brokers", &swarm, "v1", "1");
    let bee = user_data(&format!("{swarm}-bee-v1"));
    assert_eq!(env_line(&bee, "BROKER_TLS"), Some("true"), "{bee}");
    assert_eq!(env_line(&bee, "BROKER_PORT"), Some("8883"));
    assert_eq!(env_line(&bee, "BROKER_HOST"), Some(mqtt.as_str()));
    let broker_ud = user_data(&format!("{swarm}-broker-v1"));
    assert!(broker_ud.contains("listener 1883"), "{broker_ud}");
    assert!(
        broker_ud.contains(&format!("tyrell-broker-bridge '{}' '1883'", o["BrokerNlbHost"])),
        "the bridge reads the announcements through the NLB's plain listener:\n{broker_ud}"
    );

    // A broker switch moves both listeners, the TLS one included.
    ok(&["traffic", "nlb", &swarm, "--version", "v1", "--timeout", "60s"]);
    let tg = output(&format!("{swarm}-broker-v1"), "TargetGroupArn");
    assert_eq!(forwards(&o["BrokerTlsListenerArn"]), vec![(tg.clone(), 1)]);
    assert_eq!(forwards(&o["BrokerListenerArn"]), vec![(tg, 1)]);

    ok(&["stacks", "remove", "--all", &swarm]);
}

/// Whether SSM parameter `name` exists; with `value`, first writes it (as a broker box
/// would: String, or SecureString for the TLS key).
fn param(name: &str, value: Option<(&str, aws_sdk_ssm::types::ParameterType)>) -> bool {
    block_on(async {
        let ssm = emulator().ssm().await;
        if let Some((v, t)) = value {
            ssm.put_parameter().name(name).value(v).r#type(t).overwrite(true).send().await.unwrap();
        }
        ssm.get_parameter().name(name).send().await.is_ok()
    })
}

#[test]
fn without_certificates_the_brokers_end_tls_with_the_swarms_own_ca() {
    let swarm = unique("owntls");
    let vpc = network();
    let (tls_param, ca_param) = (format!("/tyrell/{swarm}/broker-tls"), format!("/tyrell/{swarm}/broker-ca"));
    // Left by an earlier swarm of the same name: a certificate for another NLB.
    assert!(param(&tls_param, Some(("stale", aws_sdk_ssm::types::ParameterType::SecureString))));
    let out = run(&["stacks", "create", "-v", &vpc, &swarm]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stacks create: {stderr}");
    assert!(!param(&tls_param, None), "the stale TLS parameter is removed before the brokers make theirs");
    // One loud warning, for the ALB; the broker is encrypted without a certificate.
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARNING")).collect();
    assert_eq!(warnings.len(), 1, "one warning, for the ALB's certificate:\n{stderr}");
    assert!(warnings[0].contains("--certificate-arn") && warnings[0].contains("plain HTTP"), "{stderr}");
    assert!(stderr.contains("the brokers end MQTT's TLS on 8883 with the swarm's own CA"), "{stderr}");
    assert!(out.stdout.iter().all(|b| *b != b'!'), "warnings go to stderr, not into the result");

    let s = stack(&swarm).unwrap();
    let o = &s.outputs;
    assert_eq!(
        [&o["BrokerTls"], &o["BrokerPort"], &o["BrokerTlsBy"], &o["BrokerTargetPort"], &o["BrokerNlbPort"]],
        ["true", "8883", "broker", "8883", "8883"]
    );
    assert_eq!(o["BrokerHost"], o["BrokerNlbHost"], "the clients verify the NLB's own name");
    assert!(!o.contains_key("BrokerTlsListenerArn"), "the NLB ends no TLS");
    // The NLB: one listener, 8883, passed through; nothing in plain text on 1883.
    let nlb = listeners_of_lb_of(&o["BrokerListenerArn"]);
    assert_eq!(nlb.iter().map(|l| l.port).collect::<Vec<_>>(), vec![8883]);
    let alb = listeners_of_lb_of(&o["AlbListenerArn"]);
    assert_eq!(alb.iter().map(|l| l.port).collect::<Vec<_>>(), vec![80]);
    // MQTT over TLS only from the swarm's groups; no one reaches the NLB on 1883.
    let nlb_rules = ingress(&o["NlbSecurityGroupId"]);
    assert!(nlb_rules.iter().all(|r| (r.0, r.1) == (8883, 8883) && r.3.is_empty()), "{nlb_rules:?}");
    let from: BTreeSet<String> = nlb_rules.into_iter().flat_map(|r| r.2.into_iter()).collect();
    let want: BTreeSet<String> =
        ["RouterSecurityGroupId", "BeeSecurityGroupId", "IndexerSecurityGroupId", "BrokerSecurityGroupId"]
            .iter()
            .map(|k| o[*k].clone())
            .collect();
    assert_eq!(from, want);
    // The brokers: 8883 from the NLB (passed-through TLS) and the indexers (their direct
    // connections, TLS too), 1883 from the brokers only (their bridges).
    let mut broker_rules: Vec<(i32, String)> = ingress(&o["BrokerSecurityGroupId"])
        .into_iter()
        .flat_map(|r| {
            assert!(r.0 == r.1 && r.3.is_empty(), "a broker rule of one port, from groups only: {r:?}");
            r.2.into_iter().map(move |g| (r.0, g))
        })
        .collect();
    broker_rules.sort();
    let mut want: Vec<(i32, String)> =
        [(8883, "NlbSecurityGroupId"), (8883, "IndexerSecurityGroupId"), (1883, "BrokerSecurityGroupId")]
            .iter()
            .map(|(p, k)| (*p, o[*k].clone()))
            .collect();
    want.sort();
    assert_eq!(broker_rules, want);
    assert_mqtt_only_from_groups(&vpc);

    // A broker version: its target group on 8883, mosquitto's TLS listener from the
    // swarm's CA, the bridge reading the announcements over TLS.
    create("brokers", &swarm, "v1", "1");
    let tg = output(&format!("{swarm}-broker-v1"), "TargetGroupArn");
    let port = block_on(async {
        let elb = emulator().elb().await;
        elb.describe_target_groups().target_group_arns(&tg).send().await.unwrap().target_groups()[0].port()
    });
    assert_eq!(port, Some(8883));
    let broker = user_data(&format!("{swarm}-broker-v1"));
    for want in [
        "listener 8883".to_string(),
        "certfile /etc/mosquitto/tls/cert.pem".to_string(),
        format!(
            "ExecStartPre=+/usr/local/sbin/tyrell-broker-tls '{}' '{tls_param}' '{ca_param}' '{}' '{swarm}'",
            emulator().region,
            o["BrokerNlbHost"]
        ),
    ] {
        assert!(broker.lines().any(|l| l.trim() == want), "broker user data lacks {want}:\n{broker}");
    }
    assert!(
        broker.contains(&format!(
            "BROKER_CA_FILE=/etc/mosquitto/tls/ca.pem exec /usr/local/sbin/tyrell-broker-bridge '{}' '8883'",
            o["BrokerNlbHost"]
        )),
        "{broker}"
    );
    // The clients: TLS to the NLB's name, trusting the CA from SSM.
    create("bees", &swarm, "v1", "1");
    let bee = user_data(&format!("{swarm}-bee-v1"));
    assert_eq!(env_line(&bee, "BROKER_TLS"), Some("true"));
    assert_eq!(env_line(&bee, "BROKER_PORT"), Some("8883"));
    assert_eq!(env_line(&bee, "BROKER_HOST"), Some(o["BrokerNlbHost"].as_str()));
    assert_eq!(env_line(&bee, "BROKER_CA_PARAM"), Some(ca_param.as_str()));

    // What the broker boxes wrote goes with the swarm.
    assert!(param(&tls_param, Some(("key and certificates", aws_sdk_ssm::types::ParameterType::SecureString))));
    assert!(param(&ca_param, Some(("the CA", aws_sdk_ssm::types::ParameterType::String))));
    ok(&["stacks", "remove", "--all", &swarm]);
    assert!(!param(&tls_param, None) && !param(&ca_param, None), "stacks remove leaves no TLS parameter");
}

#[test]
fn bad_broker_certificates_are_refused_before_any_change() {
    let vpc = network();
    let swarm = unique("badc");
    let mqtt = format!("mqtt.{swarm}.example.org");
    let other = imported_certificate(&["other.example.org"]);
    let wildcard = imported_certificate(&["*.example.net"]);
    let pending = pending_certificate(&mqtt);
    let elsewhere = other.replace(":us-east-1:", ":eu-west-1:");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--broker-certificate-arn", &other], "needs --broker-dns-name"),
        (vec!["--broker-dns-name", &mqtt], "needs --broker-certificate-arn"),
        (vec!["--broker-certificate-arn", &other, "--broker-dns-name", &mqtt], "does not cover"),
        (vec!["--broker-certificate-arn", &wildcard, "--broker-dns-name", "a.b.example.net"], "does not cover"),
        (vec!["--broker-certificate-arn", &pending, "--broker-dns-name", &mqtt], "PENDING_VALIDATION, not ISSUED"),
        (vec!["--broker-certificate-arn", &elsewhere, "--broker-dns-name", &mqtt], "has no such certificate"),
        (vec!["--broker-certificate-arn", &other, "--broker-dns-name", "Not_A_Name"], "invalid --broker-dns-name"),
        (vec!["--certificate-arn", &pending], "--certificate-arn"),
    ];
    for (flags, says) in cases {
        let mut args = vec!["stacks", "create", "-v", &vpc];
        args.extend(flags.iter().copied());
        args.push(&swarm);
        let err = fails(exit::USAGE, &args);
        assert!(err.contains(says), "{flags:?}: expected {says:?} in:\n{err}");
        assert_eq!(err.trim().lines().count(), 1, "one sentence:\n{err}");
        assert!(stack(&swarm).is_none(), "{flags:?}: a stack was made");
        let secret = block_on(async {
            emulator().ssm().await.get_parameter().name(format!("/tyrell/{swarm}/broker-password")).send().await
        });
        assert!(secret.is_err(), "{flags:?}: a secret was made");
    }
    // A wildcard covers one label: accepted.
    let ok_name = "mqtt.example.net";
    let out = ok(&[
        "stacks",
        "create",
        "-v",
        &vpc,
        "--broker-certificate-arn",
        &wildcard,
        "--broker-dns-name",
        ok_name,
        &swarm,
    ]);
    assert!(out.contains(&format!("{ok_name}:8883")), "{out}");
    ok(&["stacks", "remove", &swarm]);
}

/// Grafana over TLS (docs/MULTI-REGION.md 8.5): with a certificate, an ALB of the box's
/// own serves HTTPS on 443 and redirects 80, both from the admin ranges only, and the box
/// admits Grafana's port from that ALB only (without one: cli/tests/grafana_tls.rs).
#[test]
fn grafana_behind_an_https_alb_from_the_admin_ranges_only() {
    let vpc = network();
    let name = unique("graf");
    let cert = imported_certificate(&["grafana.example.org"]);
    let admin = "203.0.113.0/24";
    let out =
        run(&["metrics", "create", "-v", &vpc, "-a", &ami(), "--allow-cidr", admin, "--certificate-arn", &cert, &name]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "metrics create: {stderr}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
    let s = stack(&name).unwrap();
    assert!(s.outputs["GrafanaUrl"].starts_with("https://"), "{:?}", s.outputs);

    let alb = listeners_of_lb_of(&s.outputs["GrafanaListenerArn"]);
    let https = alb.iter().find(|l| l.port == 443).expect("HTTPS on 443");
    assert_eq!((https.protocol.as_str(), https.policy.as_deref()), ("HTTPS", Some(POLICY)));
    assert_eq!(https.certificates, vec![cert.clone()]);
    let http = alb.iter().find(|l| l.port == 80).expect("a listener on 80");
    let redirect = http.actions[0].redirect_config().expect("port 80 redirects");
    assert_eq!((redirect.protocol(), redirect.port()), (Some("HTTPS"), Some("443")));
    assert_eq!(redirect.status_code().map(|c| c.as_str()), Some("HTTP_301"));

    // The ALB's group admits 443 and 80 from the admin range only; the box admits Grafana
    // from the ALB's group only, no address range.
    let alb_sg = block_on(async {
        let elb = emulator().elb().await;
        let out = elb.describe_load_balancers().load_balancer_arns(&alb[0].load_balancer).send().await.unwrap();
        out.load_balancers()[0].security_groups()[0].clone()
    });
    let mut rules = ingress(&alb_sg);
    rules.sort();
    let want: Vec<Ingress> =
        [80, 443].into_iter().map(|p| (p, p, BTreeSet::new(), BTreeSet::from([admin.to_string()]))).collect();
    assert_eq!(rules, want, "{:?}", groups_in(&vpc).iter().map(|g| (g.clone(), ingress(g))).collect::<Vec<_>>());
    let box_rules = ingress(&s.outputs["SecurityGroupId"]);
    let grafana: Vec<&Ingress> = box_rules.iter().filter(|r| r.0 <= 3000 && 3000 <= r.1).collect();
    assert_eq!(grafana.len(), 1, "{box_rules:?}");
    assert_eq!(grafana[0].2, BTreeSet::from([alb_sg.clone()]));
    assert!(grafana[0].3.is_empty(), "Grafana is not reachable from an address range: {box_rules:?}");
    let ud = block_on(async {
        let ec2 = emulator().ec2().await;
        let id = s.outputs["InstanceId"].clone();
        let a = ec2
            .describe_instance_attribute()
            .instance_id(id)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        let b64 = a.user_data().and_then(|v| v.value()).unwrap().to_string();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    });
    assert!(ud.contains("GF_SECURITY_COOKIE_SECURE=true"), "{ud}");
    ok(&["metrics", "remove", &name]);
}
