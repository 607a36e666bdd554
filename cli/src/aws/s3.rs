//! S3: whether a bucket still holds data (read-only; tyrell never deletes objects).

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
