"""A FastAPI ingress: typed routes, validation and docs, served by replicas.

Run it:    schooner run examples/fastapi_app.py:app
Ask it:    curl localhost:8000/items/3?q=x
           curl -X POST localhost:8000/items -H 'content-type: application/json' \
                -d '{"name": "kite", "price": 9.5}'
"""

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

import schooner as serve

api = FastAPI(title="Inventory")


class Item(BaseModel):
    name: str
    price: float


class StoredItem(Item):
    id: int


@serve.deployment
@serve.ingress(api)
class Inventory:
    def __init__(self, currency: str = "EUR") -> None:
        self.currency = currency
        self.items: dict[int, Item] = {}

    @api.get("/")
    def index(self) -> dict:
        return {"service": "inventory", "items": len(self.items)}

    @api.get("/items/{item_id}")
    def get_item(self, item_id: int, q: str | None = None) -> dict:
        item = self.items.get(item_id)
        return {"item_id": item_id, "q": q, "found": item is not None, "currency": self.currency}

    @api.post("/items", response_model=StoredItem, status_code=201)
    def add_item(self, item: Item) -> StoredItem:
        item_id = len(self.items) + 1
        self.items[item_id] = item
        return StoredItem(id=item_id, **item.model_dump())

    @api.delete("/items/{item_id}")
    def remove_item(self, item_id: int) -> dict:
        if self.items.pop(item_id, None) is None:
            raise HTTPException(status_code=404, detail=f"no item {item_id}")
        return {"deleted": item_id}


app = Inventory.bind(currency="USD")
