//! SSM Parameter Store: the swarm's generated secrets (SecureStrings) and the traffic locks.

use aws_sdk_ssm::types::ParameterType;
use aws_sdk_ssm::Client;

use super::{describe, error_code, AwsError};

/// Creates a SecureString parameter; refuses to overwrite an existing one.
pub async fn put_secret(ssm: &Client, name: &str, value: &str, description: &str) -> Result<(), AwsError> {
    ssm.put_parameter()
        .name(name)
        .value(value)
        .description(description)
        .r#type(ParameterType::SecureString)
        .overwrite(false)
        .send()
        .await
        .map_err(|e| describe(&format!("cannot store secret parameter {name}"), e))?;
    Ok(())
}

pub async fn exists(ssm: &Client, name: &str) -> Result<bool, AwsError> {
    match ssm.get_parameter().name(name).send().await {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e) == Some("ParameterNotFound") => Ok(false),
        Err(e) => Err(describe(&format!("cannot read parameter {name}"), e)),
    }
}

/// Deletes parameters; missing ones are fine.
/// One `DeleteParameters` call per 10 names (its limit, SSM API Reference); names that do
/// not exist come back as `InvalidParameters`, not as an error.
pub async fn delete(ssm: &Client, names: &[String]) -> Result<(), AwsError> {
    for chunk in names.chunks(10) {
        ssm.delete_parameters()
            .set_names(Some(chunk.to_vec()))
            .send()
            .await
            .map_err(|e| describe(&format!("cannot delete parameters {}", chunk.join(", ")), e))?;
    }
    Ok(())
}

/// Writes a plain String parameter. Without `overwrite` this is an atomic create: it
/// answers `false` (and changes nothing) when the parameter already exists.
pub async fn put_string(
    ssm: &Client,
    name: &str,
    value: &str,
    description: &str,
    overwrite: bool,
) -> Result<bool, AwsError> {
    match ssm
        .put_parameter()
        .name(name)
        .value(value)
        .description(description)
        .r#type(ParameterType::String)
        .overwrite(overwrite)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if error_code(&e) == Some("ParameterAlreadyExists") => Ok(false),
        Err(e) => Err(describe(&format!("cannot write parameter {name}"), e)),
    }
}

/// A plain parameter's value, or `None` when it does not exist.
pub async fn get_string(ssm: &Client, name: &str) -> Result<Option<String>, AwsError> {
    match ssm.get_parameter().name(name).send().await {
        Ok(out) => Ok(out.parameter().and_then(|p| p.value()).map(str::to_string)),
        Err(e) if error_code(&e) == Some("ParameterNotFound") => Ok(None),
        Err(e) => Err(describe(&format!("cannot read parameter {name}"), e)),
    }
}
