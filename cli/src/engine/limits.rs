//! What AWS would refuse late, refused early: every stack tyrell sends is checked here
//! against the constraints its own template declares for each parameter and against
//! CloudFormation's documented quotas, before the first call that changes anything.
//!
//! Sources: *AWS CloudFormation User Guide*, "Parameters" (`AllowedPattern`,
//! `AllowedValues`, `MinLength`/`MaxLength`, `MinValue`/`MaxValue`; a pattern must match
//! the whole value) and "CloudFormation quotas" (template body in a request: 51,200
//! bytes; parameter value: 4,096 bytes; stack name: 128 characters, a letter first, then
//! letters, digits and hyphens; 50 tags per stack, tag keys up to 128 and values up to
//! 256 characters). The user data limit is checked where the user data is rendered
//! ([`super::render::USER_DATA_MAX_BYTES`]).

use std::collections::BTreeMap;

use super::validate::Invalid;
use crate::aws::cfn::StackSpec;

/// CloudFormation's limit on a template passed in the request (`TemplateBody`).
pub const TEMPLATE_BODY_MAX_BYTES: usize = 51_200;
/// CloudFormation's limit on one parameter value.
pub const PARAMETER_VALUE_MAX_BYTES: usize = 4_096;
/// CloudFormation's limit on a stack name.
pub const STACK_NAME_MAX: usize = 128;
/// Tags per stack, and the longest tag key and value.
pub const TAGS_MAX: usize = 50;
pub const TAG_KEY_MAX: usize = 128;
pub const TAG_VALUE_MAX: usize = 256;

/// One parameter as a template declares it (only what tyrell checks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamDecl {
    pub name: String,
    /// `String`, `Number`, `CommaDelimitedList`, `AWS::EC2::VPC::Id`, ...
    pub kind: String,
    pub default: Option<String>,
    pub allowed_pattern: Option<String>,
    pub allowed_values: Option<Vec<String>>,
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
    pub min_value: Option<f64>,
    pub max_value: Option<f64>,
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    let v = v.split(" #").next().unwrap_or(v).trim();
    if v.len() >= 2 && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\''))) {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// The `Parameters` section of a CloudFormation YAML template, as tyrell's templates
/// write it: a top-level `Parameters:` key, each parameter a key indented by two spaces,
/// its properties by four, `AllowedValues` as a flow (`[a, b]`) or block (`- a`) list.
pub fn declared_parameters(template: &str) -> Vec<ParamDecl> {
    let mut out: Vec<ParamDecl> = Vec::new();
    let mut inside = false;
    let mut in_values = false;
    for line in template.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            inside = line.trim_end() == "Parameters:";
            continue;
        }
        if !inside {
            continue;
        }
        let text = line.trim();
        if indent == 2 {
            if let Some(name) = text.strip_suffix(':') {
                out.push(ParamDecl { name: name.to_string(), ..Default::default() });
            }
            in_values = false;
            continue;
        }
        let Some(p) = out.last_mut() else { continue };
        if indent >= 6 && in_values {
            if let Some(v) = text.strip_prefix("- ") {
                p.allowed_values.get_or_insert_with(Vec::new).push(unquote(v));
            }
            continue;
        }
        if indent != 4 {
            continue;
        }
        in_values = false;
        let Some((key, value)) = text.split_once(':') else { continue };
        let value = value.trim();
        match key {
            "Type" => p.kind = unquote(value),
            "Default" => p.default = Some(unquote(value)),
            "AllowedPattern" => p.allowed_pattern = Some(unquote(value)),
            "MinLength" => p.min_length = unquote(value).parse().ok(),
            "MaxLength" => p.max_length = unquote(value).parse().ok(),
            "MinValue" => p.min_value = unquote(value).parse().ok(),
            "MaxValue" => p.max_value = unquote(value).parse().ok(),
            "AllowedValues" if value.is_empty() => in_values = true,
            "AllowedValues" => {
                let inner = value.trim_start_matches('[').trim_end_matches(']');
                p.allowed_values = Some(inner.split(',').map(unquote).filter(|v| !v.is_empty()).collect());
            }
            _ => {}
        }
    }
    out
}

/// Checks one value against its declaration; `Err` is the reason.
fn check_value(p: &ParamDecl, value: &str) -> Result<(), String> {
    if value.len() > PARAMETER_VALUE_MAX_BYTES {
        return Err(format!("it is {} bytes, over CloudFormation's {PARAMETER_VALUE_MAX_BYTES}", value.len()));
    }
    let items: Vec<&str> = if p.kind == "CommaDelimitedList" { value.split(',').collect() } else { vec![value] };
    if p.kind == "Number" {
        let n: f64 = value.trim().parse().map_err(|_| "it is not a number".to_string())?;
        if let Some(min) = p.min_value.filter(|m| n < *m) {
            return Err(format!("it is below the template's MinValue {min}"));
        }
        if let Some(max) = p.max_value.filter(|m| n > *m) {
            return Err(format!("it is above the template's MaxValue {max}"));
        }
    }
    if let Some(min) = p.min_length.filter(|m| value.len() < *m) {
        return Err(format!("it is shorter than the template's MinLength {min}"));
    }
    if let Some(max) = p.max_length.filter(|m| value.len() > *m) {
        return Err(format!("it is longer than the template's MaxLength {max}"));
    }
    if let Some(allowed) = &p.allowed_values {
        if let Some(bad) = items.iter().find(|v| !allowed.iter().any(|a| a == *v)) {
            return Err(format!("{bad:?} is not one of the template's AllowedValues ({})", allowed.join(", ")));
        }
    }
    if let Some(pattern) = &p.allowed_pattern {
        let re = regex::Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| format!("the template's AllowedPattern {pattern} does not compile ({e})"))?;
        if let Some(bad) = items.iter().find(|v| !re.is_match(v)) {
            return Err(format!("{bad:?} does not match the template's AllowedPattern {pattern}"));
        }
    }
    Ok(())
}

/// Checks a stack before it is sent: its name, size, tags, and every parameter against
/// the template's declaration (unknown parameters and missing required ones included).
/// One sentence naming the stack, the parameter and the rule broken.
pub fn check_stack(spec: &StackSpec) -> Result<(), Invalid> {
    let fail = |why: String| Err(Invalid(format!("stack {} would be refused by AWS: {why}", spec.name)));
    let name_ok = spec.name.starts_with(|c: char| c.is_ascii_alphabetic())
        && spec.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && spec.name.len() <= STACK_NAME_MAX;
    if !name_ok {
        return fail(format!("a stack name is 1-{STACK_NAME_MAX} letters, digits and hyphens starting with a letter"));
    }
    if spec.template.len() > TEMPLATE_BODY_MAX_BYTES {
        return fail(format!(
            "its template is {} bytes, over CloudFormation's {TEMPLATE_BODY_MAX_BYTES} for a template in the request",
            spec.template.len()
        ));
    }
    if spec.tags.len() > TAGS_MAX {
        return fail(format!("{} tags, over CloudFormation's {TAGS_MAX}", spec.tags.len()));
    }
    if let Some((k, v)) = spec.tags.iter().find(|(k, v)| k.len() > TAG_KEY_MAX || v.len() > TAG_VALUE_MAX) {
        return fail(format!(
            "tag {k}={v:?} is too long (keys up to {TAG_KEY_MAX} characters, values up to {TAG_VALUE_MAX})"
        ));
    }
    let declared: BTreeMap<String, ParamDecl> =
        declared_parameters(&spec.template).into_iter().map(|p| (p.name.clone(), p)).collect();
    for (k, v) in &spec.parameters {
        let Some(p) = declared.get(k) else {
            return fail(format!("parameter {k} is not declared in its template"));
        };
        if let Err(why) = check_value(p, v) {
            return fail(format!("parameter {k} = {v:?}: {why}"));
        }
    }
    if let Some(p) = declared.values().find(|p| p.default.is_none() && !spec.parameters.contains_key(&p.name)) {
        return fail(format!("parameter {} has no default and no value", p.name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TPL: &str = "\
AWSTemplateFormatVersion: \"2010-09-09\"
Description: >-
  x
Parameters:
  Swarm:
    Type: String
    Description: Name: of the swarm.
    AllowedPattern: ^[a-z][a-z0-9-]{0,27}[a-z0-9]$
  Size:
    Type: Number
    Default: 1
    MinValue: 0
    MaxValue: 500
  Proto:
    Type: String
    Default: HTTP
    AllowedValues: [HTTP, TCP]
  Azs:
    Type: String
    AllowedValues:
      - \"2\"
      - \"3\"
  Cidrs:
    Type: CommaDelimitedList
    AllowedPattern: ^(\\d{1,3}\\.){3}\\d{1,3}/\\d{1,2}$|^$
Resources:
  X:
    Type: AWS::SQS::Queue
";

    fn spec(params: &[(&str, &str)]) -> StackSpec {
        StackSpec {
            name: "swarm1".into(),
            template: TPL.into(),
            parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn reads_every_declaration() {
        let d = declared_parameters(TPL);
        let names: Vec<&str> = d.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["Swarm", "Size", "Proto", "Azs", "Cidrs"]);
        assert_eq!(d[3].allowed_values.as_deref(), Some(&["2".to_string(), "3".to_string()][..]));
        assert_eq!(d[1].max_value, Some(500.0));
    }

    #[test]
    fn values_outside_the_template_constraints_are_refused() {
        let good = [("Swarm", "sw1"), ("Azs", "2"), ("Cidrs", "10.0.0.0/8,,")];
        assert_eq!(check_stack(&spec(&good)), Ok(()));
        // A one-letter swarm passes a 1-28 character rule but not the fleet template's pattern.
        let e = check_stack(&spec(&[("Swarm", "a"), ("Azs", "2"), ("Cidrs", "")])).unwrap_err().0;
        assert!(e.contains("Swarm") && e.contains("AllowedPattern"), "{e}");
        for (bad, want) in [
            (vec![("Swarm", "sw1"), ("Azs", "4"), ("Cidrs", "")], "AllowedValues"),
            (vec![("Swarm", "sw1"), ("Azs", "2"), ("Cidrs", ""), ("Size", "501")], "MaxValue"),
            (vec![("Swarm", "sw1"), ("Azs", "2"), ("Cidrs", ""), ("Size", "x")], "not a number"),
            (vec![("Swarm", "sw1"), ("Azs", "2"), ("Cidrs", "10.0.0.0/8,nope")], "\"nope\""),
            (vec![("Swarm", "sw1"), ("Azs", "2"), ("Cidrs", ""), ("Nope", "1")], "not declared"),
            (vec![("Swarm", "sw1"), ("Cidrs", "")], "no default"),
        ] {
            let e = check_stack(&spec(&bad)).unwrap_err().0;
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn cloudformation_quotas() {
        let good = [("Swarm", "sw1"), ("Azs", "2"), ("Cidrs", "")];
        let mut s = spec(&good);
        s.template.push_str(&"#".repeat(TEMPLATE_BODY_MAX_BYTES));
        assert!(check_stack(&s).unwrap_err().0.contains("51200"));
        let mut s = spec(&good);
        s.tags.insert("k".into(), "v".repeat(TAG_VALUE_MAX + 1));
        assert!(check_stack(&s).unwrap_err().0.contains("too long"));
        let mut s = spec(&good);
        s.name = "a".repeat(STACK_NAME_MAX + 1);
        assert!(check_stack(&s).is_err());
        let mut s = spec(&good);
        s.parameters.insert("Swarm".into(), "a".repeat(PARAMETER_VALUE_MAX_BYTES + 1));
        assert!(check_stack(&s).unwrap_err().0.contains("4096"));
    }
}
