"""Two models composed through handles: a preprocessor feeding a classifier.

Run it:    schooner run examples/composition.py:app
Ask it:    curl -X POST localhost:8000 -d 'What a WONDERFUL day'

The ingress passes the preprocessor's response straight into the classifier
call; Schooner resolves it first, without a round trip through the ingress.
"""

from starlette.requests import Request

import schooner as serve
from schooner.handle import DeploymentHandle


@serve.deployment
class Preprocessor:
    def normalize(self, text: str) -> list[str]:
        return [word.strip(".,!?").lower() for word in text.split()]


@serve.deployment(num_replicas=2)
class SentimentModel:
    POSITIVE = {"good", "great", "wonderful", "happy", "love"}
    NEGATIVE = {"bad", "awful", "terrible", "sad", "hate"}

    def predict(self, words: list[str]) -> dict:
        score = sum(w in self.POSITIVE for w in words) - sum(w in self.NEGATIVE for w in words)
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return {"label": label, "score": score, "words": len(words)}


@serve.deployment
class Pipeline:
    def __init__(self, preprocessor: DeploymentHandle, model: DeploymentHandle) -> None:
        self.preprocessor = preprocessor
        self.model = model

    async def __call__(self, request: Request) -> dict:
        text = (await request.body()).decode()
        words = self.preprocessor.normalize.remote(text)
        return await self.model.predict.remote(words)


app = Pipeline.bind(Preprocessor.bind(), SentimentModel.bind())
