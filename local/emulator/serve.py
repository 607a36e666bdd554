"""The local cloud's AWS emulator: moto's server (PyPI `moto[server]`, see
../shared/EMULATOR.md) with the CloudFormation resource types the swarm's templates
use and moto does not create.

moto 5.2 builds no `AWS::AutoScaling::LifecycleHook` from a template (its parser warns
"not supported by moto's CloudFormation implementation" and skips it), although its Auto
Scaling API has the hook (PutLifecycleHook, DescribeLifecycleHooks). The fleet template's
termination hook (`DrainHook`, roles/fleet/template.yaml) is what holds a worker's box
while it drains, so without it the drain path never runs on the local cloud. This adds
the resource type, following
https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/aws-resource-autoscaling-lifecyclehook.html
(properties AutoScalingGroupName, LifecycleTransition, HeartbeatTimeout, DefaultResult,
LifecycleHookName; `Ref` returns the hook's name).

Run as `python serve.py -H 127.0.0.1 -p PORT` (the same arguments as `moto_server`).
"""

from typing import Any

from moto.autoscaling.models import autoscaling_backends
from moto.core.common_models import CloudFormationModel


class CfnLifecycleHook(CloudFormationModel):
    """An Auto Scaling lifecycle hook made by a CloudFormation stack."""

    # moto files every model under the service named by its module's second part.
    __module__ = "moto.autoscaling.cfn_lifecycle_hook"

    def __init__(self, name: str, group: str, account_id: str, region_name: str):
        self.name = name
        self.group = group
        self.account_id = account_id
        self.region_name = region_name

    @property
    def physical_resource_id(self) -> str:
        return self.name

    @staticmethod
    def cloudformation_name_type() -> str:
        return "LifecycleHookName"

    @staticmethod
    def cloudformation_type() -> str:
        return "AWS::AutoScaling::LifecycleHook"

    @classmethod
    def has_cfn_attr(cls, attr: str) -> bool:
        return False

    @classmethod
    def create_from_cloudformation_json(  # type: ignore[misc]
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
        **kwargs: Any,
    ) -> "CfnLifecycleHook":
        p = cloudformation_json["Properties"]
        name = p.get("LifecycleHookName") or kwargs.get("LogicalId") or resource_name
        group = p["AutoScalingGroupName"]
        timeout = p.get("HeartbeatTimeout")
        autoscaling_backends[account_id][region_name].create_lifecycle_hook(
            name=name,
            as_name=group,
            transition=p["LifecycleTransition"],
            timeout=int(timeout) if timeout is not None else None,
            # CloudFormation's default, as the API's.
            result=p.get("DefaultResult") or "ABANDON",
        )
        return cls(name, group, account_id, region_name)

    @classmethod
    def update_from_cloudformation_json(  # type: ignore[misc]
        cls,
        original_resource: "CfnLifecycleHook",
        new_resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
    ) -> "CfnLifecycleHook":
        original_resource.delete(account_id, region_name)
        return cls.create_from_cloudformation_json(
            new_resource_name, cloudformation_json, account_id, region_name,
            LogicalId=original_resource.name,
        )

    @classmethod
    def delete_from_cloudformation_json(  # type: ignore[misc]
        cls,
        resource_name: str,
        cloudformation_json: dict[str, Any],
        account_id: str,
        region_name: str,
    ) -> None:
        group = cloudformation_json["Properties"]["AutoScalingGroupName"]
        autoscaling_backends[account_id][region_name].delete_lifecycle_hook(group, resource_name)

    def delete(self, account_id: str, region_name: str) -> None:
        autoscaling_backends[account_id][region_name].delete_lifecycle_hook(self.group, self.name)

    def is_created(self) -> bool:
        return True


if __name__ == "__main__":
    from moto.server import main

    main()
