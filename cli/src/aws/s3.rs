//! S3: whether a bucket still holds data; emptying one only when the operator asks
//! (`tyrell down --delete-archive`): tyrell never deletes objects as a side effect.

use aws_sdk_s3::Client;

use super::{describe, error_code, AwsError};

/// Whether a bucket holds anything: a current object, or (in a versioned bucket) an old
/// version or delete marker — either makes `DeleteBucket` fail with `BucketNotEmpty`.
/// `Ok(None)` when the bucket does not exist. Two calls at most, one key each.
pub async fn holds_data(s3: &Client, bucket: &str) -> Result<Option<bool>, AwsError> {
    match s3.list_objects_v2().bucket(bucket).max_keys(1).send().await {
        Ok(out) if !out.contents().is_empty() => return Ok(Some(true)),
        Ok(_) => {}
        Err(e) if error_code(&e) == Some("NoSuchBucket") => return Ok(None),
        Err(e) => return Err(describe(&format!("cannot list bucket {bucket}"), e)),
    }
    match s3.list_object_versions().bucket(bucket).max_keys(1).send().await {
        Ok(out) => Ok(Some(!out.versions().is_empty() || !out.delete_markers().is_empty())),
        Err(e) if error_code(&e) == Some("NoSuchBucket") => Ok(None),
        Err(e) => Err(describe(&format!("cannot list the object versions of bucket {bucket}"), e)),
    }
}

/// Deletes every object of a bucket, old versions and delete markers included, 1,000 keys
/// a `DeleteObjects` call; returns how many keys it deleted (0 when the bucket does not
/// exist). Only for an operator's explicit ask (`tyrell down --delete-archive`).
pub async fn empty(s3: &Client, bucket: &str) -> Result<usize, AwsError> {
    use aws_sdk_s3::types::{Delete, ObjectIdentifier};
    let mut deleted = 0;
    loop {
        let out = match s3.list_object_versions().bucket(bucket).max_keys(1000).send().await {
            Ok(out) => out,
            Err(e) if error_code(&e) == Some("NoSuchBucket") => return Ok(deleted),
            Err(e) => return Err(describe(&format!("cannot list the object versions of bucket {bucket}"), e)),
        };
        let id = |key: Option<&str>, version: Option<&str>| {
            key.and_then(|k| {
                ObjectIdentifier::builder().key(k).set_version_id(version.map(str::to_string)).build().ok()
            })
        };
        let mut keys: Vec<ObjectIdentifier> =
            out.versions().iter().filter_map(|v| id(v.key(), v.version_id())).collect();
        keys.extend(out.delete_markers().iter().filter_map(|m| id(m.key(), m.version_id())));
        if keys.is_empty() {
            // An unversioned bucket may list no versions: its current objects.
            let listed = s3
                .list_objects_v2()
                .bucket(bucket)
                .max_keys(1000)
                .send()
                .await
                .map_err(|e| describe(&format!("cannot list bucket {bucket}"), e))?;
            keys.extend(listed.contents().iter().filter_map(|o| id(o.key(), None)));
        }
        if keys.is_empty() {
            return Ok(deleted);
        }
        let n = keys.len();
        let delete = Delete::builder()
            .set_objects(Some(keys))
            .quiet(true)
            .build()
            .map_err(|e| AwsError::Api(format!("cannot empty bucket {bucket}: {e}")))?;
        let out = s3
            .delete_objects()
            .bucket(bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| describe(&format!("cannot delete the objects of bucket {bucket}"), e))?;
        if let Some(err) = out.errors().first() {
            return Err(AwsError::Api(format!(
                "cannot delete object {} of bucket {bucket}: {}",
                err.key().unwrap_or("?"),
                err.message().unwrap_or("refused")
            )));
        }
        deleted += n;
    }
}
