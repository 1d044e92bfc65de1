"""The fruit stand: a market that prices fruit orders through three stand deployments.

Run it:    schooner run examples/fruit.py:app
Ask it:    curl -X POST localhost:8000 -d '["MANGO", 2]'     ->  6

Each stand's price comes from its ``user_config`` (change it in a config file
and the live replicas are reconfigured without a restart).
"""

from starlette.requests import Request

import schooner as serve
from schooner.handle import DeploymentHandle


@serve.deployment(user_config={"price": 3})
class MangoStand:
    DEFAULT_PRICE = 1

    def __init__(self) -> None:
        self.price = self.DEFAULT_PRICE

    def reconfigure(self, config: dict) -> None:
        self.price = config.get("price", self.DEFAULT_PRICE)

    def check_price(self, amount: float) -> float:
        return self.price * amount


@serve.deployment(user_config={"price": 2})
class OrangeStand:
    DEFAULT_PRICE = 0.5

    def __init__(self) -> None:
        self.price = self.DEFAULT_PRICE

    def reconfigure(self, config: dict) -> None:
        self.price = config.get("price", self.DEFAULT_PRICE)

    def check_price(self, amount: float) -> float:
        return self.price * amount


@serve.deployment(user_config={"price": 4})
class PearStand:
    DEFAULT_PRICE = 0.75

    def __init__(self) -> None:
        self.price = self.DEFAULT_PRICE

    def reconfigure(self, config: dict) -> None:
        self.price = config.get("price", self.DEFAULT_PRICE)

    def check_price(self, amount: float) -> float:
        return self.price * amount


@serve.deployment(num_replicas=2)
class FruitMarket:
    def __init__(
        self, mango: DeploymentHandle, orange: DeploymentHandle, pear: DeploymentHandle
    ) -> None:
        self.stands = {"MANGO": mango, "ORANGE": orange, "PEAR": pear}

    async def check_price(self, fruit: str, amount: float) -> float:
        stand = self.stands.get(fruit.upper())
        if stand is None:
            return -1
        return await stand.check_price.remote(amount)

    async def __call__(self, request: Request) -> float:
        fruit, amount = await request.json()
        return await self.check_price(fruit, amount)


app = FruitMarket.bind(MangoStand.bind(), OrangeStand.bind(), PearStand.bind())
