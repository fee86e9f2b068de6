"""The S3-compatible bucket for cold snapshots: private, encrypted, old snapshots expired by a lifecycle rule."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from wrenn.provision.fleet._settings import FleetSettings

__all__ = ["SnapshotBucket"]


class SnapshotBucket(pulumi.ComponentResource):
    def __init__(self, name: str, settings: FleetSettings, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("wrenn:fleet:SnapshotBucket", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.bucket = aws.s3.Bucket(
            f"{name}-bucket",
            bucket_prefix=f"{settings.snapshot_bucket_prefix}-",
            force_destroy=False,
            tags={"wrenn:fleet": settings.name},
            opts=child,
        )
        self.public_access_block = aws.s3.BucketPublicAccessBlock(
            f"{name}-private",
            bucket=self.bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        self.encryption = aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-sse",
            bucket=self.bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
                        sse_algorithm="AES256"
                    )
                )
            ],
            opts=child,
        )
        self.lifecycle = aws.s3.BucketLifecycleConfiguration(
            f"{name}-expire",
            bucket=self.bucket.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-cold-snapshots",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix="snapshots/"),
                    expiration=aws.s3.BucketLifecycleConfigurationRuleExpirationArgs(
                        days=settings.snapshot_expire_days
                    ),
                )
            ],
            opts=child,
        )
        self.register_outputs({"bucket": self.bucket.bucket})
