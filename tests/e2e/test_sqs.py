"""The `sqs` transport end to end against moto_server: the MIME lands in S3 (byte for byte
what would have been sent: Bcc stripped, signature in) and the submission record, pointing
at it, in the SQS queue; a missing bucket parks the queue instead of failing the message."""

from __future__ import annotations

import json

import boto3

from conftest import PASSWORDS, submit_as_alice, make_message, queue_id_of, ses_env, wait_for_log

import smtplib


def aws(moto, service: str):
    return boto3.client(service, endpoint_url=moto.url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def submit(server, rcpts: list[str], extra_headers: str = "") -> str:
    return submit_as_alice(server, make_message("to the queue", extra_headers=extra_headers), rcpts)


def sqs_server(start_server, moto, queue_url: str, bucket: str):
    transport = {"kind": "sqs", "queue_url": queue_url, "bucket": bucket, "key_prefix": "mime/",
                 "s3_force_path_style": True, "timeout_secs": 10}
    return start_server({"sender.transport": transport, "spool.retry_base_secs": 1,
                         "spool.retry_max_secs": 2}, env=ses_env(moto.url), name="sqs")


def test_mime_to_s3_record_to_sqs(start_server, moto):
    s3, sqs = aws(moto, "s3"), aws(moto, "sqs")
    s3.create_bucket(Bucket="outbox-mime")
    queue_url = sqs.create_queue(QueueName="outbox")["QueueUrl"]
    server = sqs_server(start_server, moto, queue_url, "outbox-mime")
    qid = submit(server, ["rcpt@example.net", "hidden@example.org"], "Bcc: hidden@example.org\r\n")

    messages = []
    for _ in range(20):  # long polls of up to 1 s each; returns as soon as one arrives
        messages = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1).get("Messages", [])
        if messages:
            break
    assert len(messages) == 1, "one record in the queue"
    record = json.loads(messages[0]["Body"])
    assert record["submission_id"] == qid
    assert record["mail_from"] == "alice@example.com"
    assert record["recipients"] == ["rcpt@example.net", "hidden@example.org"]
    assert record["tags"]["submission_id"] == qid and record["tags"]["domain"] == "example_com"
    assert record["s3"] == {"bucket": "outbox-mime", "key": f"mime/{qid}.eml"}
    assert "Subject" not in messages[0]["Body"], "the record carries no MIME"

    mime = s3.get_object(Bucket="outbox-mime", Key=f"mime/{qid}.eml")["Body"].read()
    assert b"Subject: to the queue" in mime
    assert b"Bcc:" not in mime
    assert record["size"] == len(mime)
    wait_for_log(server, rf"message sent.*{qid}|{qid}.*message sent")


def test_missing_bucket_parks_the_queue(start_server, moto):
    sqs = aws(moto, "sqs")
    queue_url = sqs.create_queue(QueueName="outbox")["QueueUrl"]
    server = sqs_server(start_server, moto, queue_url, "no-such-bucket")
    qid = submit(server, ["rcpt@example.net"])
    line = wait_for_log(server, rf"{qid}.*provider unavailable|provider unavailable.*{qid}")
    assert "NoSuchBucket" in str(line)
    # Once the bucket exists, the probe succeeds and the message goes, without a spent attempt.
    aws(moto, "s3").create_bucket(Bucket="no-such-bucket")
    sent = wait_for_log(server, rf"message sent.*{qid}|{qid}.*message sent", timeout=30)
    assert "attempt=1" in str(sent)
