"""Fetch a user's profile and the shipping options at the same time."""

import asyncio

from orchestrator import Orchestrator

orchestrator = Orchestrator()


@orchestrator.action
async def get_user_profile(user_id: str) -> dict[str, str]:
    await asyncio.sleep(0.02)  # stands in for the user service
    return {"user_id": user_id, "name": "Alice"}


@orchestrator.action
async def get_shipping_options(destination: str) -> list[str]:
    await asyncio.sleep(0.01)  # stands in for the shipping provider
    return ["Standard", "Express", "Overnight"] if destination == "USA" else ["Standard"]


parallel_tasks = orchestrator.parallel([get_user_profile, get_shipping_options], fail_fast=True)


async def main() -> None:
    profile, methods = await parallel_tasks("user42", "USA")
    print("profile:", profile)
    print("shipping:", methods)
    print("three users:", await orchestrator.map(get_user_profile, ["u1", "u2", "u3"]))


if __name__ == "__main__":
    orchestrator.run_sync(main)
