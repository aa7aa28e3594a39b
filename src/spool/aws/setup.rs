//! `outbox aws init`: creates (or finds) the queue, its dead-letter queue, the bucket and the
//! table the AWS backend needs, with the settings it relies on. Safe to run again.

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;

use super::items::LISTING;
use super::{aws_error, clients};
use crate::config::AwsSpoolConfig;
use crate::spool::SpoolError;

/// SQS's longest retention: dead letters are kept 14 days.
const DEAD_LETTER_RETENTION_SECS: u64 = 14 * 86_400;
/// Receives of one copy before SQS moves it to the dead-letter queue (the seed design's 5).
pub const MAX_RECEIVE_COUNT: u32 = 5;

/// What `init` did, one line per resource.
pub async fn init(
    config: &AwsSpoolConfig,
    visibility_timeout_secs: u64,
) -> Result<Vec<String>, SpoolError> {
    let (sqs, s3, ddb) = clients(config).await;
    let mut done = Vec::new();

    let dlq = sqs
        .create_queue()
        .queue_name(&config.dead_letter_queue)
        .attributes(
            QueueAttributeName::MessageRetentionPeriod,
            DEAD_LETTER_RETENTION_SECS.to_string(),
        )
        .send()
        .await
        .map_err(|e| aws_error("SQS CreateQueue (dead letters)", e))?
        .queue_url
        .unwrap_or_default();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| aws_error("SQS GetQueueAttributes", e))?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .unwrap_or_default();
    done.push(format!("dead-letter queue {dlq} (14-day retention)"));
    let redrive = serde_json::json!({
        "deadLetterTargetArn": dlq_arn,
        "maxReceiveCount": MAX_RECEIVE_COUNT.to_string(),
    });
    let queue = sqs
        .create_queue()
        .queue_name(&config.queue)
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout_secs.to_string(),
        )
        .attributes(
            QueueAttributeName::MessageRetentionPeriod,
            DEAD_LETTER_RETENTION_SECS.to_string(),
        )
        .send()
        .await
        .map_err(|e| aws_error("SQS CreateQueue", e))?
        .queue_url
        .unwrap_or_default();
    done.push(format!(
        "queue {queue} (redrive to the dead-letter queue after {MAX_RECEIVE_COUNT} receives)"
    ));

    match s3.create_bucket().bucket(&config.bucket).send().await {
        Ok(_) => done.push(format!("bucket {}", config.bucket)),
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
            }) =>
        {
            done.push(format!("bucket {} (already there)", config.bucket))
        }
        Err(e) => return Err(aws_error("S3 CreateBucket", e)),
    }

    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(SpoolError::storage)
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(SpoolError::storage)
    };
    let listing = GlobalSecondaryIndex::builder()
        .index_name(LISTING)
        .key_schema(key("lst", KeyType::Hash)?)
        .key_schema(key("lsk", KeyType::Range)?)
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::KeysOnly)
                .build(),
        )
        .build()
        .map_err(SpoolError::storage)?;
    let created = ddb
        .create_table()
        .table_name(&config.table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute("pk")?)
        .attribute_definitions(attribute("sk")?)
        .attribute_definitions(attribute("lst")?)
        .attribute_definitions(attribute("lsk")?)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .global_secondary_indexes(listing)
        .send()
        .await;
    match created {
        Ok(_) => done.push(format!(
            "table {} (on-demand, index {LISTING})",
            config.table
        )),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_in_use_exception()) =>
        {
            done.push(format!("table {} (already there)", config.table))
        }
        Err(e) => return Err(aws_error("DynamoDB CreateTable", e)),
    }
    // Wait until the table can be used before turning TTL on.
    for _ in 0..120 {
        let status = ddb
            .describe_table()
            .table_name(&config.table)
            .send()
            .await
            .map_err(|e| aws_error("DynamoDB DescribeTable", e))?
            .table
            .and_then(|t| t.table_status)
            .map(|s| s.as_str().to_string());
        if status.as_deref() == Some("ACTIVE") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let ttl = ddb
        .update_time_to_live()
        .table_name(&config.table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .enabled(true)
                .attribute_name("expires")
                .build()
                .map_err(SpoolError::storage)?,
        )
        .send()
        .await;
    match ttl {
        Ok(_) => done.push("TTL on attribute expires".to_string()),
        // Already on (DynamoDB refuses to set it twice).
        Err(e) if e.code() == Some("ValidationException") => {
            done.push("TTL on attribute expires (already on)".to_string())
        }
        Err(e) => return Err(aws_error("DynamoDB UpdateTimeToLive", e)),
    }
    Ok(done)
}
