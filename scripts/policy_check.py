#!/usr/bin/env python3
"""tyrell's own policy checks on the CloudFormation templates (run by scripts/gates).

    policy_check.py [TEMPLATE...]   check the templates (default: roles/*/template.yaml)
    policy_check.py --self-test     prove every rule on scripts/policy_fixtures/

Rules (each finding names its rule):
  open-ingress   no security group or ingress rule admits 0.0.0.0/0 or ::/0, except on
                 the listener ports of an internet-facing load balancer's security group
  imdsv2         every launch template requires IMDSv2 (HttpTokens: required); every
                 instance is launched from a launch template; launch configurations too
  bucket         every S3 bucket has default encryption and a full public access block
  queue          every SQS queue is encrypted (SqsManagedSseEnabled or KmsMasterKeyId)
  secret         no parameter default or literal property looks like a secret; no NoEcho
                 parameters (secrets live in SSM Parameter Store, by name)
  broker-exposure  no ingress rule admits an MQTT port (1883, 8883) from an address range,
                 but for a Ref to a parameter whose AllowedPattern ends in /17 (a bee
                 region's private half, docs/MULTI-REGION.md 6.4): MQTT is reached from
                 security groups, never from the internet or a whole VPC
  listener       every load balancer listener is HTTPS/TLS with a TLS 1.2+ policy, TCP/UDP,
                 or plain HTTP on port 80 (checkov's CKV_AWS_2/103 cannot read Fn::If)

Templates are read as CloudFormation YAML with short-form tags (!Ref, !Sub, !If ...).
Values behind Fn::If are checked in every branch, except that the condition OnEmulator
(true only on the local AWS emulator, see roles/base/template.yaml) is taken as false:
the rules judge what AWS gets. A Ref to a parameter is checked against its Default.

Exit status: 0 when nothing is found, 1 when something is, 2 on unreadable input.
"""

from __future__ import annotations

import glob
import os
import re
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "scripts", "policy_fixtures")

# Conditions that are true only on the emulator; their Fn::If takes the false branch.
EMULATOR_CONDITIONS = {"OnEmulator"}
WORLD = {"0.0.0.0/0", "::/0"}
TLS12_POLICY = re.compile(r"^ELBSecurityPolicy-(TLS13-|TLS-1-2-|FS-1-2-)")
# A name (parameter or property key) that holds a secret value: it ends in one of these
# (MasterUserPassword, DbSecret, SecretString, ApiKey; not HttpTokens, not KeyName).
SECRETISH_NAME = re.compile(
    r"(pass(word|wd|phrase)|secret|secret_?string|secret_?(access_?)?key|token|api_?key|"
    r"access_?key|private_?key|auth_?key|credentials?)$",
    re.IGNORECASE,
)
# Names that hold a pointer to a secret, not the secret itself.
POINTER_NAME = re.compile(r"(Param|Parameter|ParameterName|Name|Arn|Id|Path)$")
SECRET_VALUE = [
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"aws_secret_access_key\s*=", re.IGNORECASE), "an AWS secret key"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), "a GitHub token"),
    (re.compile(r"\bxox[abpors]-[A-Za-z0-9-]{10,}\b"), "a Slack token"),
]
DYNAMIC_REFERENCE = re.compile(r"^\{\{resolve:(ssm-secure|secretsmanager):")


# --------------------------------------------------------------------------------------
# Loading: CloudFormation YAML with short-form intrinsic functions.
# --------------------------------------------------------------------------------------
class CfnLoader(yaml.SafeLoader):
    pass


def _construct_tag(loader: CfnLoader, suffix: str, node: yaml.Node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "Condition":
        return {"Condition": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {"Fn::" + suffix: value}


CfnLoader.add_multi_constructor("!", _construct_tag)


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        doc = yaml.load(f, Loader=CfnLoader)  # noqa: S506 - SafeLoader subclass
    if not isinstance(doc, dict) or not isinstance(doc.get("Resources"), dict):
        raise ValueError(f"{path}: not a CloudFormation template (no Resources)")
    return doc


# --------------------------------------------------------------------------------------
# Value helpers.
# --------------------------------------------------------------------------------------
NOVALUE = object()


def alternatives(value, template: dict) -> list:
    """Every concrete value `value` can take: Fn::If branches (OnEmulator false),
    parameter Refs resolved to their Default (or kept as a Ref when there is none)."""
    if isinstance(value, dict) and len(value) == 1:
        (key, arg), = value.items()
        if key == "Fn::If" and isinstance(arg, list) and len(arg) == 3:
            cond, yes, no = arg
            if cond in EMULATOR_CONDITIONS:
                return alternatives(no, template)
            return alternatives(yes, template) + alternatives(no, template)
        if key == "Ref":
            if arg == "AWS::NoValue":
                return [NOVALUE]
            param = template.get("Parameters", {}).get(arg)
            if isinstance(param, dict) and "Default" in param:
                return [param["Default"], value]
    return [value]


def concrete(value, template: dict) -> list:
    """alternatives() without AWS::NoValue."""
    return [v for v in alternatives(value, template) if v is not NOVALUE]


def as_list(value, template: dict) -> list:
    """The items of a list property, each item expanded to its alternatives."""
    items = []
    for alt in concrete(value, template):
        if isinstance(alt, list):
            for item in alt:
                items.extend(concrete(item, template))
        elif alt is not None:
            items.append(alt)
    return items


def props(resource: dict) -> dict:
    p = resource.get("Properties")
    return p if isinstance(p, dict) else {}


def logical_ids(value) -> set:
    """Logical ids a value points at (Ref X, GetAtt X.Y, ${X} in Sub)."""
    found = set()
    if isinstance(value, dict):
        for key, arg in value.items():
            if key == "Ref" and isinstance(arg, str):
                found.add(arg)
            elif key == "Fn::GetAtt":
                if isinstance(arg, list) and arg:
                    found.add(arg[0])
                elif isinstance(arg, str):
                    found.add(arg.split(".")[0])
            else:
                found |= logical_ids(arg)
    elif isinstance(value, list):
        for item in value:
            found |= logical_ids(item)
    return found


def port(value, template: dict):
    """An integer port when the value is a literal (or a parameter with a Default)."""
    for alt in concrete(value, template):
        try:
            return int(alt)
        except (TypeError, ValueError):
            continue
    return None


# --------------------------------------------------------------------------------------
# Rules. Each yields (rule, resource, message).
# --------------------------------------------------------------------------------------
def rule_open_ingress(t: dict):
    resources = t["Resources"]
    # Security groups of internet-facing load balancers -> their listener ports.
    public_ports: dict[str, set[int]] = {}
    for lb_id, lb in resources.items():
        if lb.get("Type") != "AWS::ElasticLoadBalancingV2::LoadBalancer":
            continue
        if "internet-facing" not in concrete(props(lb).get("Scheme", "internet-facing"), t):
            continue
        ports = set()
        for ln in resources.values():
            if ln.get("Type") == "AWS::ElasticLoadBalancingV2::Listener" and lb_id in logical_ids(
                props(ln).get("LoadBalancerArn")
            ):
                p = port(props(ln).get("Port"), t)
                if p is not None:
                    ports.add(p)
        for sg in as_list(props(lb).get("SecurityGroups", []), t):
            for sg_id in logical_ids(sg):
                public_ports.setdefault(sg_id, set()).update(ports)

    def check(rule_owner: str, group_ids: set, rule: dict):
        rule = {k: v for k, v in rule.items()}
        cidrs = set()
        for key in ("CidrIp", "CidrIpv6"):
            for alt in concrete(rule.get(key), t):
                if isinstance(alt, str):
                    cidrs.add(alt.strip())
        world = cidrs & WORLD
        if not world:
            return
        proto = str(next(iter(concrete(rule.get("IpProtocol"), t)), "")).lower()
        lo, hi = port(rule.get("FromPort"), t), port(rule.get("ToPort"), t)
        allowed = set()
        for g in group_ids:
            allowed |= public_ports.get(g, set())
        if proto in ("tcp", "6") and lo is not None and lo == hi and lo in allowed:
            return
        yield (
            "open-ingress",
            rule_owner,
            f"admits {', '.join(sorted(world))} on {proto or '?'} {lo}-{hi}; only the "
            f"listener ports of an internet-facing load balancer's group may "
            f"(here: {sorted(allowed) or 'none'})",
        )

    for rid, res in resources.items():
        typ = res.get("Type")
        if typ == "AWS::EC2::SecurityGroup":
            for rule in as_list(props(res).get("SecurityGroupIngress", []), t):
                if isinstance(rule, dict):
                    yield from check(rid, {rid}, rule)
        elif typ == "AWS::EC2::SecurityGroupIngress":
            p = props(res)
            yield from check(rid, logical_ids(p.get("GroupId")) | logical_ids(p.get("GroupName")), p)


def rule_imdsv2(t: dict):
    for rid, res in t["Resources"].items():
        typ = res.get("Type")
        if typ == "AWS::EC2::LaunchTemplate":
            data = props(res).get("LaunchTemplateData") or {}
            meta = data.get("MetadataOptions") if isinstance(data, dict) else None
            tokens = concrete(meta.get("HttpTokens"), t) if isinstance(meta, dict) else []
            if not tokens or any(v != "required" for v in tokens):
                yield ("imdsv2", rid, "launch template does not set MetadataOptions.HttpTokens: required")
        elif typ == "AWS::AutoScaling::LaunchConfiguration":
            meta = props(res).get("MetadataOptions")
            tokens = concrete(meta.get("HttpTokens"), t) if isinstance(meta, dict) else []
            if not tokens or any(v != "required" for v in tokens):
                yield ("imdsv2", rid, "launch configuration does not set MetadataOptions.HttpTokens: required")
        elif typ == "AWS::EC2::Instance":
            lt = props(res).get("LaunchTemplate")
            targets = logical_ids(lt) if lt else set()
            if not any(t["Resources"].get(x, {}).get("Type") == "AWS::EC2::LaunchTemplate" for x in targets):
                yield ("imdsv2", rid, "instance is not launched from a launch template of this template "
                       "(CloudFormation can only require IMDSv2 through one)")


def rule_bucket(t: dict):
    for rid, res in t["Resources"].items():
        if res.get("Type") != "AWS::S3::Bucket":
            continue
        p = props(res)
        enc = p.get("BucketEncryption") or {}
        rules = as_list(enc.get("ServerSideEncryptionConfiguration", []), t) if isinstance(enc, dict) else []
        algos = []
        for r in rules:
            d = r.get("ServerSideEncryptionByDefault") if isinstance(r, dict) else None
            if isinstance(d, dict):
                algos.extend(concrete(d.get("SSEAlgorithm"), t))
        if not algos or any(a not in ("AES256", "aws:kms", "aws:kms:dsse") for a in algos):
            yield ("bucket", rid, "bucket has no default encryption (BucketEncryption SSEAlgorithm)")
        pab = p.get("PublicAccessBlockConfiguration")
        keys = ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
        if not isinstance(pab, dict) or any(
            not concrete(pab.get(k), t) or any(str(v).lower() != "true" for v in concrete(pab.get(k), t))
            for k in keys
        ):
            yield ("bucket", rid, "bucket does not block all public access (PublicAccessBlockConfiguration, all four true)")


def rule_queue(t: dict):
    for rid, res in t["Resources"].items():
        if res.get("Type") != "AWS::SQS::Queue":
            continue
        p = props(res)
        sse = concrete(p.get("SqsManagedSseEnabled"), t)
        kms = [v for v in concrete(p.get("KmsMasterKeyId"), t) if v not in (None, "")]
        if kms or (sse and all(str(v).lower() == "true" for v in sse)):
            continue
        yield ("queue", rid, "queue is not encrypted (SqsManagedSseEnabled: true or KmsMasterKeyId)")


def _strings(value, path=""):
    """(path, key, string) for every literal string under value."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str):
                yield (f"{path}.{k}", k, v)
            else:
                yield from _strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, str):
                yield (f"{path}[{i}]", None, v)
            else:
                yield from _strings(v, f"{path}[{i}]")


def rule_secret(t: dict):
    for name, param in (t.get("Parameters") or {}).items():
        if not isinstance(param, dict):
            continue
        if str(param.get("NoEcho", "")).lower() == "true":
            yield ("secret", name, "NoEcho parameter: pass secrets as SSM parameter names, not values")
        default = param.get("Default")
        if isinstance(default, (str, int, float)) and str(default) != "":
            d = str(default)
            if SECRETISH_NAME.search(name) and not POINTER_NAME.search(name):
                yield ("secret", name, "parameter named like a secret has a Default value")
            for pattern, what in SECRET_VALUE:
                if pattern.search(d):
                    yield ("secret", name, f"parameter Default looks like {what}")
    for rid, res in t["Resources"].items():
        for path, key, s in _strings(res.get("Properties") or {}, rid):
            if key and SECRETISH_NAME.search(key) and not POINTER_NAME.search(key) \
                    and s and not DYNAMIC_REFERENCE.match(s):
                yield ("secret", rid, f"{path} is a literal secret (use a dynamic reference or SSM)")
            for pattern, what in SECRET_VALUE:
                if pattern.search(s):
                    yield ("secret", rid, f"{path} contains {what}")


def rule_listener(t: dict):
    for rid, res in t["Resources"].items():
        if res.get("Type") != "AWS::ElasticLoadBalancingV2::Listener":
            continue
        p = props(res)
        lport = port(p.get("Port"), t)
        for proto in concrete(p.get("Protocol"), t):
            if proto in ("TCP", "UDP", "TCP_UDP"):
                continue
            if proto in ("HTTPS", "TLS"):
                policies = concrete(p.get("SslPolicy"), t)
                if not policies or any(not TLS12_POLICY.match(str(x)) for x in policies):
                    yield ("listener", rid, f"{proto} listener without a TLS 1.2+ SslPolicy "
                           "(ELBSecurityPolicy-TLS13-*, -TLS-1-2-*, -FS-1-2-*)")
                continue
            if proto == "HTTP" and lport == 80:
                continue
            yield ("listener", rid, f"{proto} listener on port {lport}: only plain HTTP on 80 is allowed")


MQTT_PORTS = {1883, 8883}


def rule_broker_exposure(t: dict):
    params = t.get("Parameters") or {}

    def ports(rule: dict) -> set:
        proto = {str(v).lower() for v in concrete(rule.get("IpProtocol"), t)}
        if proto & {"-1", "all"}:
            return set(MQTT_PORTS)
        found = set()
        los = [v for v in concrete(rule.get("FromPort"), t) if v is not None]
        his = [v for v in concrete(rule.get("ToPort"), t) if v is not None]
        for lo, hi in zip(los, his):
            try:
                lo, hi = int(lo), int(hi)
            except (TypeError, ValueError):
                continue
            found |= {p for p in MQTT_PORTS if lo <= p <= hi}
        return found

    def bee_region_range(value) -> bool:
        if isinstance(value, dict) and set(value) == {"Ref"}:
            pattern = (params.get(value["Ref"]) or {}).get("AllowedPattern", "")
            return isinstance(pattern, str) and pattern.endswith("/17$")
        return False

    def check(owner: str, rule: dict):
        hit = ports(rule)
        if not hit:
            return
        for key in ("CidrIp", "CidrIpv6"):
            if key in rule and not bee_region_range(rule[key]):
                yield ("broker-exposure", owner,
                       f"admits MQTT port(s) {sorted(hit)} from an address range ({key}); "
                       f"admit the clients' security groups (or a bee region's /17 parameter)")

    for rid, res in t["Resources"].items():
        typ = res.get("Type")
        if typ == "AWS::EC2::SecurityGroup":
            for rule in as_list(props(res).get("SecurityGroupIngress", []), t):
                if isinstance(rule, dict):
                    yield from check(rid, rule)
        elif typ == "AWS::EC2::SecurityGroupIngress":
            yield from check(rid, props(res))


RULES = [rule_open_ingress, rule_imdsv2, rule_bucket, rule_queue, rule_secret, rule_listener, rule_broker_exposure]


def check(path: str) -> list[tuple[str, str, str]]:
    t = load(path)
    findings = []
    for rule in RULES:
        findings.extend(rule(t))
    return findings


# --------------------------------------------------------------------------------------
# Self-test: every fixture states the rules it must trip in a first-line comment
#   # expect: open-ingress, imdsv2        (or "# expect: none" for a clean fixture)
# --------------------------------------------------------------------------------------
def self_test() -> int:
    fixtures = sorted(glob.glob(os.path.join(FIXTURES, "*.yaml")))
    if not fixtures:
        print(f"policy self-test: no fixtures in {FIXTURES}", file=sys.stderr)
        return 1
    failed = 0
    for path in fixtures:
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
        m = re.match(r"#\s*expect:\s*(.+)$", first)
        name = os.path.relpath(path, ROOT)
        if not m:
            print(f"FAIL {name}: first line must be '# expect: RULE[, RULE]' or '# expect: none'")
            failed += 1
            continue
        expected = {r.strip() for r in m.group(1).split(",") if r.strip() and r.strip() != "none"}
        try:
            got = {f[0] for f in check(path)}
        except Exception as e:  # a fixture that cannot be read is a failed test
            print(f"FAIL {name}: {e}")
            failed += 1
            continue
        if got == expected:
            print(f"ok   {name}: {', '.join(sorted(got)) or 'clean'}")
        else:
            print(f"FAIL {name}: expected {sorted(expected) or 'clean'}, got {sorted(got) or 'clean'}")
            failed += 1
    print(f"policy self-test: {len(fixtures) - failed} of {len(fixtures)} fixtures behave")
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--self-test"]:
        return self_test()
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    paths = argv or sorted(glob.glob(os.path.join(ROOT, "roles", "*", "template.yaml")))
    if not paths:
        print("policy check: no templates found", file=sys.stderr)
        return 2
    total = 0
    for path in paths:
        name = os.path.relpath(path, ROOT)
        try:
            findings = check(path)
        except (OSError, ValueError, yaml.YAMLError) as e:
            print(f"policy check: cannot read {name}: {e}", file=sys.stderr)
            return 2
        for rule, where, msg in findings:
            print(f"{name}: [{rule}] {where}: {msg}")
        total += len(findings)
    print(f"policy check: {len(paths)} template(s), {total} finding(s)")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
