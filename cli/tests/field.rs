//! Faults operators of similar tools reported, replayed on tyrell through the real binary
//! against the emulator: each input once failed (a panic, a late AWS refusal, data
//! destroyed as a side effect, SDK jargon); each now ends with one clear sentence, a
//! non-zero exit and nothing changed in AWS.

mod support;

use support::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Field report: a role whose rendered cloud-init is 21,079 bytes passed `create
/// --dry-run` and `create`; on AWS the launch template fails (user data is limited to
/// 16,384 bytes). Now both refuse it before any call that changes anything.
#[test]
fn user_data_over_ec2s_limit_is_refused_before_creating() {
    let (sw, _) = swarm("ud");
    let roles = testkit::roles_copy();
    let ci = roles.path().join("roles/bee/cloud-init.yaml");
    let mut text = std::fs::read_to_string(&ci).unwrap();
    let filler = "# padding to push the rendered user data over 16 KB\n";
    while text.len() < 21_079 {
        text.push_str(filler);
    }
    std::fs::write(&ci, &text).unwrap();
    // Tests run in parallel on one emulator: look only at this swarm's stacks.
    let mine = || stack_names().into_iter().filter(|n| n.starts_with(&sw)).collect::<Vec<_>>();
    let before = mine();
    for dry in [true, false] {
        let ami = ami();
        let mut args = vec!["bees", "create", "-a", &ami, &sw];
        if dry {
            args.push("--dry-run");
        }
        let out = tyrell().env("TYRELL_ROLES_DIR", roles.path().join("roles")).args(&args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(exit::OTHER), "{err}");
        assert!(err.contains("16384") && err.contains("bee"), "{err}");
        assert!(out.stdout.is_empty(), "a refused --dry-run printed a plan");
    }
    assert_eq!(mine(), before, "nothing may be created");
}

/// A one-letter swarm passed tyrell's own name check but not the fleet template's
/// `AllowedPattern`, so every role create failed inside CloudFormation.
#[test]
fn names_the_templates_would_refuse_are_refused_up_front() {
    let net = unique("nm");
    let vpc = json(&["network", "create", &net])["vpc_id"].as_str().unwrap().to_string();
    let err = fails(exit::USAGE, &["stacks", "create", "-v", &vpc, "a"]);
    assert!(err.contains("invalid swarm name") && err.contains("2-28"), "{err}");
    assert!(!stack_names().contains(&"a".to_string()));
}

/// Field report: `stacks remove S --all` with objects in the archive bucket deleted every
/// fleet, then the base stack failed with BucketNotEmpty. Now nothing is removed while the
/// swarm holds data (bucket objects, or messages not yet archived), and the error says how
/// to keep or empty it.
#[test]
fn removing_a_swarm_that_holds_data_is_refused_before_anything_goes() {
    let (sw, _) = swarm("dt");
    ok(&["bees", "create", "-a", &ami(), "--version", "v1", &sw]);
    let desc = json(&["stacks", "describe", &sw]);
    let bucket = desc["bucket"].as_str().unwrap().to_string();
    let queue = desc["queue_url"].as_str().unwrap().to_string();
    let mine = || stack_names().into_iter().filter(|n| n.starts_with(&sw)).collect::<Vec<_>>();
    let before = mine();

    block_on(async {
        let s3 = emulator().s3().await;
        s3.put_object()
            .bucket(&bucket)
            .key("2026/11/23/11/x.ndjson.gz")
            .body(b"x".to_vec().into())
            .send()
            .await
            .unwrap();
    });
    let err = fails(exit::IN_USE, &["stacks", "remove", &sw, "--all"]);
    assert!(err.contains(&bucket) && err.contains("archived") && err.contains("aws s3"), "{err}");
    assert!(err.contains("nothing was removed"), "{err}");
    assert_eq!(mine(), before, "no fleet and no base stack may go while the archive holds data");

    // Emptied by the operator: the bucket no longer blocks, but a message not yet archived does.
    block_on(async {
        let s3 = emulator().s3().await;
        s3.delete_object().bucket(&bucket).key("2026/11/23/11/x.ndjson.gz").send().await.unwrap();
        let sqs = emulator().sqs().await;
        sqs.send_message().queue_url(&queue).message_body("{}").send().await.unwrap();
    });
    let err = fails(exit::IN_USE, &["stacks", "remove", &sw, "--all"]);
    assert!(err.contains("queue holds 1 message") && err.contains("drain"), "{err}");
    assert_eq!(mine(), before);

    block_on(async {
        let sqs = emulator().sqs().await;
        sqs.purge_queue().queue_url(&queue).send().await.unwrap();
    });
    let removed = json(&["stacks", "remove", &sw, "--all"]);
    assert_eq!(removed["removed"].as_array().unwrap().len(), 2, "{removed}");
}

/// Settings out of range are refused with their name and range, never a panic.
#[test]
fn durations_and_sizes_out_of_range_name_the_setting_and_its_range() {
    for (args, want) in [
        (vec!["--timeout", "99999999999999999h", "network"], "--timeout"),
        (vec!["--timeout", "25h", "network"], "1s to 24h"),
        (vec!["--timeout", "0", "network"], "1s to 24h"),
        (vec!["traffic", "elb", "sw", "--router", "v1", "--bake", "99999999999999999m"], "--bake"),
        (vec!["traffic", "elb", "sw", "--router", "v1", "--canary", "300"], "--canary"),
        (vec!["traffic", "elb", "sw", "--router", "v1", "--canary", "0"], "--canary"),
    ] {
        let out = run(&args);
        let err = stderr(&out);
        assert!(!out.status.success(), "tyrell {args:?} succeeded");
        assert_eq!(out.status.code(), Some(exit::USAGE), "tyrell {args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(want), "tyrell {args:?}: expected {want:?} in {err}");
    }
    let err = fails(exit::USAGE, &["bees", "scale", "sw", "v1", "501"]);
    assert!(err.contains("-s/--size") && err.contains("0 to 500"), "{err}");
}

/// Field report: `--region eu-west-1,us-east-1` failed with "must be a valid host label";
/// a profile that does not exist said "no region".
#[test]
fn region_and_profile_mistakes_are_said_plainly() {
    let err = fails(exit::USAGE, &["--region", "eu-west-1,us-east-1", "network"]);
    assert!(err.contains("invalid AWS region \"eu-west-1,us-east-1\"") && !err.contains("host label"), "{err}");
    let out = tyrell().env("AWS_REGION", "eu west 1").args(["network"]).output().unwrap();
    assert_eq!(out.status.code(), Some(exit::USAGE));
    assert!(stderr(&out).contains("invalid AWS region"), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::write(&config, "[default]\nregion = eu-west-1\n[profile ops]\nregion = us-east-1\n").unwrap();
    let out = tyrell()
        .env("AWS_CONFIG_FILE", &config)
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.path().join("none"))
        .args(["--profile", "nosuch", "network"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(exit::USAGE), "{err}");
    assert!(err.contains("AWS profile \"nosuch\" is not defined") && err.contains("default, ops"), "{err}");
    assert!(!err.contains("no AWS region"), "{err}");
}

/// Field report: `-v` log lines carried colour codes when piped.
#[test]
fn piped_logs_carry_no_colour_codes() {
    let out = run(&["-v", "network"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("AWS API calls"), "-v logs the call count: {err}");
    assert!(!err.contains('\u{1b}'), "escape codes in piped logs: {err:?}");
}

/// Field report: `tyrell bees diff S` was unclear.
#[test]
fn an_unknown_role_verb_names_the_known_ones() {
    let out = run(&["bees", "diff", "swarm1"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("diff") && err.contains("create") && err.contains("prune"), "{err}");
}

/// `--schedule "UP,DOWN,SIZE"` split a cron list such as `1,31 * * * *` on its commas; the
/// schedule has separate flags now, and a cron list reaches the Auto Scaling schedule whole.
#[test]
fn a_custom_schedule_with_a_cron_list_works() {
    let (sw, _) = swarm("sc");
    let args = [
        "workers",
        "create",
        "-a",
        &ami(),
        "--version",
        "c1",
        "--scale-up",
        "1,31 * * * *",
        "--scale-down",
        "15,45 * * * *",
        "--scale-up-size",
        "2",
        &sw,
    ];
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let plan = json(&dry);
    assert_eq!(plan["parameters"]["ScaleUpCron"], "1,31 * * * *", "{plan}");
    assert_eq!(plan["parameters"]["ScaleUpSize"], "2", "{plan}");
    ok(&args);
    let actions = block_on(async {
        let asg = emulator().autoscaling().await;
        let out =
            asg.describe_scheduled_actions().auto_scaling_group_name(format!("{sw}-worker-c1")).send().await.unwrap();
        let mut v: Vec<String> =
            out.scheduled_update_group_actions().iter().filter_map(|a| a.recurrence().map(str::to_string)).collect();
        v.sort();
        v
    });
    assert_eq!(actions, ["1,31 * * * *", "15,45 * * * *"]);
    // The one-flag form cannot carry a cron list: it says which flags can.
    let err = fails(exit::USAGE, &["workers", "create", "-a", &ami(), "--schedule", "1,31 * * * *,45 * * * *,1", &sw]);
    assert!(err.contains("--scale-up"), "{err}");
}

/// `tyrell bees S` made two Auto Scaling calls per version (122 calls for 60 versions);
/// the groups are now read in batches of 50 names, shared by the weights.
#[test]
fn listing_sixty_versions_takes_a_few_calls() {
    let (sw, _) = swarm("ls");
    let ami = ami();
    for i in 0..60 {
        ok(&["bees", "create", "-a", &ami, "-s", "0", "--version", &format!("b{i}"), "--no-schedule", &sw]);
    }
    let out = run(&["-v", "bees", &sw, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed["versions"].as_array().unwrap().len(), 60);
    let err = stderr(&out);
    let calls: usize = err
        .lines()
        .find_map(|l| l.split(" AWS API calls").next().filter(|_| l.contains("AWS API calls")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no call count in: {err}"));
    eprintln!("tyrell bees with 60 versions: {calls} AWS API calls");
    assert!(calls <= 10, "tyrell bees with 60 versions made {calls} AWS calls");
}
