//! Grafana is served over TLS (issue 12, docs/MULTI-REGION.md 8.5): the real binary
//! against the emulator, everything read back through AWS.
//!
//! * Without a certificate Grafana serves HTTPS itself on 3000 to the admin ranges, with a
//!   certificate made on the box (packer/scripts/role-metrics.sh, tyrell-grafana-tls): the
//!   instance's user data configures Grafana for HTTPS with that certificate and key and
//!   names the SSM parameter the box publishes it to; the instance role may put that one
//!   parameter; `metrics create` no longer warns and prints where the certificate is and
//!   how to fetch it; `metrics remove` deletes the parameter.
//! * With a certificate the box's own ALB serves HTTPS and reaches Grafana over HTTPS too
//!   (target group and health check), the same Grafana configuration behind it.
//!
//! The emulator boots no box, so the certificate's publication is played here by putting
//! the parameter as the box would.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use base64::Engine as _;
use support::*;

/// The SSM parameter a metrics box publishes its Grafana certificate to.
fn certificate_param(name: &str) -> String {
    format!("/tyrell/{name}/grafana-certificate")
}

fn network() -> String {
    json(&["network", "create", &unique("gtlsn")])["vpc_id"].as_str().unwrap().to_string()
}

/// The user data the box boots with: its instance's `UserData` attribute, decoded.
fn instance_user_data(instance: &str) -> String {
    block_on(async {
        let ec2 = emulator().ec2().await;
        let a = ec2
            .describe_instance_attribute()
            .instance_id(instance)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap();
        let b64 = a.user_data().and_then(|v| v.value()).expect("the instance has user data").to_string();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    })
}

/// The physical id of the resource `logical` of stack `stack`, and the stack's ARN.
fn resource(stack: &str, logical: &str) -> (String, String) {
    block_on(async {
        let cfn = emulator().cloudformation().await;
        // Filtering by LogicalResourceId makes the emulator answer HTTP 500: read them all.
        let out = cfn.describe_stack_resources().stack_name(stack).send().await.unwrap();
        let r = out.stack_resources().iter().find(|r| r.logical_resource_id() == Some(logical)).expect(logical);
        (r.physical_resource_id().unwrap().to_string(), r.stack_id().unwrap().to_string())
    })
}

/// The statements of the inline policy `policy` of IAM role `role`, as the emulator holds
/// them (read with boto3 from the project venv: tyrell has no IAM client).
fn role_policy(role: &str, policy: &str) -> Vec<serde_json::Value> {
    let e = emulator();
    let out = Command::new(testkit::venv_tool("python"))
        .args([
            "-c",
            // The emulator keeps a template's inline policy as Python's repr of it.
            "import ast, boto3, json, sys\n\
             iam = boto3.client('iam', endpoint_url=sys.argv[1], region_name=sys.argv[2],\n\
                 aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             d = iam.get_role_policy(RoleName=sys.argv[3], PolicyName=sys.argv[4])['PolicyDocument']\n\
             print(json.dumps(ast.literal_eval(d) if isinstance(d, str) else d))",
            &e.url,
            &e.region,
            role,
            policy,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "get-role-policy {role} {policy}: {}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    match &doc["Statement"] {
        serde_json::Value::Array(a) => a.clone(),
        one => vec![one.clone()],
    }
}

/// A JSON string or list of strings, as a list.
fn strings(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::String(s) => vec![s.clone()],
        serde_json::Value::Array(a) => a.iter().map(|s| s.as_str().unwrap().to_string()).collect(),
        other => panic!("not a string or list: {other}"),
    }
}

fn parameter(name: &str) -> Option<String> {
    block_on(async {
        let ssm = emulator().ssm().await;
        let p = ssm.get_parameter().name(name).send().await.ok()?;
        p.parameter().and_then(|p| p.value()).map(str::to_string)
    })
}

/// Puts the certificate parameter as the box's tyrell-grafana-tls does at boot.
fn publish_as_the_box_does(name: &str) {
    block_on(async {
        let ssm = emulator().ssm().await;
        ssm.put_parameter()
            .name(name)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .value("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
            .send()
            .await
            .unwrap();
    });
}

/// Grafana's part of the user data, the same with and without an ALB: HTTPS with the
/// certificate made on the box, TLS-only cookies, and the unit that makes and publishes
/// the certificate to `param` before Grafana starts.
fn assert_grafana_serves_https(ud: &str, param: &str) {
    for line in [
        "Environment=GF_SERVER_PROTOCOL=https",
        "Environment=GF_SERVER_CERT_FILE=/etc/grafana/tls/grafana.crt",
        "Environment=GF_SERVER_CERT_KEY=/etc/grafana/tls/grafana.key",
        "Environment=GF_SECURITY_COOKIE_SECURE=true",
        "Wants=tyrell-grafana-tls.service",
        "After=tyrell-grafana-tls.service",
        &format!("ExecStart=/usr/local/sbin/tyrell-grafana-tls {param} {}", emulator().region),
        "- [systemctl, enable, --now, tyrell-grafana-tls.service]",
    ] {
        assert!(ud.lines().any(|l| l.trim() == line), "user data lacks `{line}`:\n{ud}");
    }
    assert!(!ud.contains("GF_SERVER_PROTOCOL=http\n"), "{ud}");
    assert!(!ud.contains("BEGIN") && !ud.contains("PRIVATE KEY"), "no certificate or key in the user data");
    // The script itself is in the image (packer/scripts/role-metrics.sh): the user data
    // stays inside EC2's limit (render::USER_DATA_MAX_BYTES).
    assert!(!ud.contains("openssl req"), "tyrell-grafana-tls is in the image, not the user data");
    assert!(ud.len() <= 16_384, "user data of {} bytes", ud.len());
}

/// The instance role's inline policy lets the box put exactly `param` (and read its
/// password): one statement with `ssm:PutParameter`, on that parameter's ARN alone.
fn assert_box_may_put_only(stack: &str, param: &str) {
    let (role, stack_arn) = resource(stack, "Role");
    // arn:aws:cloudformation:REGION:ACCOUNT:stack/NAME/ID
    let account = stack_arn.split(':').nth(4).unwrap();
    let arn = format!("arn:aws:ssm:{}:{account}:parameter{param}", emulator().region);
    let statements = role_policy(&role, "metrics");
    let writes: Vec<&serde_json::Value> = statements
        .iter()
        .filter(|s| strings(&s["Action"]).iter().any(|a| a == "ssm:PutParameter" || a.contains('*')))
        .collect();
    assert_eq!(writes.len(), 1, "{statements:?}");
    assert_eq!(writes[0]["Effect"], "Allow");
    assert_eq!(strings(&writes[0]["Action"]), ["ssm:PutParameter"]);
    assert_eq!(strings(&writes[0]["Resource"]), [arn], "{statements:?}");
}

#[test]
fn without_a_certificate_grafana_serves_https_itself_and_publishes_its_certificate() {
    let vpc = network();
    let name = unique("gtls");
    let param = certificate_param(&name);
    let admin = "203.0.113.0/24";
    let out = run(&["metrics", "create", "-v", &vpc, "-a", &ami(), "--allow-cidr", admin, &name]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "metrics create: {stderr}");
    assert!(!stderr.contains("WARNING") && !stderr.contains("plain HTTP"), "{stderr}");
    let s = stack(&name).unwrap();
    let instance = resource(&name, "Instance").0;
    let private_ip = block_on(async {
        let ec2 = emulator().ec2().await;
        let out = ec2.describe_instances().instance_ids(&instance).send().await.unwrap();
        out.reservations()[0].instances()[0].private_ip_address().unwrap().to_string()
    });
    assert_eq!(s.outputs["GrafanaUrl"], format!("https://{private_ip}:3000"));
    assert!(!s.outputs.contains_key("GrafanaListenerArn"));

    // One line, through the reporter: HTTPS with a self-signed certificate, its parameter,
    // and the command that fetches it.
    let fetch = format!(
        "aws ssm get-parameter --region {} --name {param} --query Parameter.Value --output text",
        emulator().region
    );
    let notes: Vec<&str> = stderr.lines().filter(|l| l.contains("self-signed")).collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    assert!(notes[0].starts_with("==> "), "through the reporter: {stderr}");
    for part in ["HTTPS", &s.outputs["GrafanaUrl"], &param, &fetch] {
        assert!(notes[0].contains(part), "the line lacks `{part}`: {}", notes[0]);
    }
    assert!(!String::from_utf8_lossy(&out.stdout).contains("self-signed"), "the line goes to stderr");

    // Grafana from the admin range only, on 3000 (HTTPS now).
    let rules = ingress(&s.outputs["SecurityGroupId"]);
    assert_eq!(rules, vec![(3000, 3000, BTreeSet::new(), BTreeSet::from([admin.to_string()]))]);

    assert_grafana_serves_https(&instance_user_data(&s.outputs["InstanceId"]), &param);
    assert_box_may_put_only(&name, &param);

    // The box publishes its certificate; `metrics remove` deletes it with the password.
    publish_as_the_box_does(&param);
    assert!(parameter(&param).is_some());
    let password = format!("/tyrell/{name}/grafana-password");
    assert!(parameter(&password).is_some());
    ok(&["metrics", "remove", &name]);
    assert!(stack(&name).is_none());
    assert_eq!(parameter(&param), None, "{param} left behind");
    assert_eq!(parameter(&password), None, "{password} left behind");
}

#[test]
fn behind_its_alb_grafana_is_reached_over_https_too() {
    let vpc = network();
    let name = unique("gtlsa");
    let param = certificate_param(&name);
    let cert = support::imported_certificate(&emulator().region, &["grafana.example.org"]);
    let out = run(&[
        "metrics",
        "create",
        "-v",
        &vpc,
        "-a",
        &ami(),
        "--allow-cidr",
        "198.51.100.0/24",
        "--certificate-arn",
        &cert,
        &name,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "metrics create: {stderr}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
    assert!(!stderr.contains("self-signed"), "operators reach Grafana through the ALB's certificate: {stderr}");
    let s = stack(&name).unwrap();
    assert!(s.outputs["GrafanaUrl"].starts_with("https://"), "{:?}", s.outputs);

    // ALB → box over HTTPS: the target group and its health check.
    let (tg, _) = resource(&name, "GrafanaTargetGroup");
    let (protocol, port, check, path, lb) = block_on(async {
        let elb = emulator().elb().await;
        let out = elb.describe_target_groups().target_group_arns(&tg).send().await.unwrap();
        let g = &out.target_groups()[0];
        (
            g.protocol().map(|p| p.as_str().to_string()),
            g.port(),
            g.health_check_protocol().map(|p| p.as_str().to_string()),
            g.health_check_path().map(str::to_string),
            g.load_balancer_arns().to_vec(),
        )
    });
    assert_eq!(protocol.as_deref(), Some("HTTPS"));
    assert_eq!(port, Some(3000));
    assert_eq!(check.as_deref(), Some("HTTPS"));
    assert_eq!(path.as_deref(), Some("/api/health"));
    assert_eq!(lb.len(), 1, "the target group serves the ALB's listener");
    // (The emulator does not register a template's `Targets`: the box's port is not read back.)

    // The same Grafana configuration as without an ALB, the same one parameter to write.
    assert_grafana_serves_https(&instance_user_data(&s.outputs["InstanceId"]), &param);
    assert_box_may_put_only(&name, &param);

    publish_as_the_box_does(&param);
    ok(&["metrics", "remove", &name]);
    assert_eq!(parameter(&param), None, "{param} left behind");
}
