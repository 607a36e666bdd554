//! `tyrell local ...` runs the local cloud's program (`tyrell-local`, docs/LOCAL.md) with
//! the same arguments, streams and exit code; the local cloud itself is tested in local/.

mod support;

#[test]
fn tyrell_local_hands_its_command_line_to_tyrell_local() {
    let cloud = support::unique("tl");
    let out = support::tyrell().args(["local", "status", "--cloud", &cloud]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // A cloud without a runner: tyrell-local's documented exit code 3, passed through.
    assert_eq!(out.status.code(), Some(3), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&cloud) && stdout.contains("no runner"), "{stdout}");
    let help = support::ok(&["local", "--help"]);
    assert!(help.contains("tyrell local up") && help.contains("docs/LOCAL.md"), "{help}");
}
