"""Check stock for a SKU and notify the team when it is out."""

import asyncio

from orchestrator import Orchestrator

orchestrator = Orchestrator()
STOCK = {"ABC123": 0, "XYZ789": 12}


@orchestrator.action
async def check_inventory(sku: str) -> dict[str, object]:
    await asyncio.sleep(0.01)  # stands in for a database lookup
    return {"sku": sku, "in_stock": STOCK[sku] > 0}


@orchestrator.action
def notify_team(sku: str) -> bool:
    print(f"notified the team: {sku} is out of stock")  # stands in for a chat message
    return True


async def main(sku: str) -> bool:
    result = await check_inventory(sku)
    if not result["in_stock"]:
        return await notify_team(sku)
    return False


if __name__ == "__main__":
    print("notified:", orchestrator.run_sync(main, "ABC123"))
