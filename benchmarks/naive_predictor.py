"""The baseline predictor of benchmarks/predictor.py: the way the original project served.

One image at a time, in the request handler: PIL decode, torchvision transforms, eager fp32 in
contiguous memory. It loads the same model folder with the same loader and answers the same V2
requests through the same KServe HTTP stack as the real predictor, so the benchmark compares
predictors, not web servers.

    python benchmarks/naive_predictor.py --model_dir DIR --http_port PORT
"""

from __future__ import annotations

import argparse
import io
import uuid

import numpy as np
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model
from PIL import Image
from torchvision import transforms

from invmon.serving.options import Limits
from invmon.serving.rest import split_bytes_elements
from invmon.serving.server import model_server
from invmon.training.model import load_model


class NaiveCounter(Model):
    """PIL + torchvision transforms + eager fp32, one image after another."""

    def __init__(self, name: str, model_dir: str):
        super().__init__(name)
        self.model_dir = model_dir
        self.ready = False

    def load(self) -> bool:
        model, self.config = load_model(self.model_dir, "cpu")
        self.model = model.to(memory_format=torch.contiguous_format).eval()
        size = self.config.preprocessing.image_size
        self.transform = transforms.Compose(
            [
                transforms.Resize((size, size)),
                transforms.ToTensor(),
                transforms.Normalize(self.config.preprocessing.mean, self.config.preprocessing.std),
            ]
        )
        self.ready = True
        return True

    def predict(self, request: InferRequest, headers=None) -> InferResponse:
        tensor = request.inputs[0]
        images = split_bytes_elements(tensor._raw_data)
        probabilities = []
        for data in images:
            image = Image.open(io.BytesIO(data)).convert("RGB")
            with torch.no_grad():
                logits = self.model(self.transform(image).unsqueeze(0))
            probabilities.append(torch.softmax(logits, dim=1)[0].numpy())
        probabilities = np.stack(probabilities).astype(np.float32)
        classes = np.asarray(self.config.classes, dtype=np.int64)
        outputs = []
        for name, datatype, array in (
            ("count", "INT64", classes[probabilities.argmax(axis=1)]),
            ("expected_count", "FP32", (probabilities @ classes.astype(np.float32))),
            ("probabilities", "FP32", probabilities),
            ("classes", "INT64", classes),
        ):
            output = InferOutput(name=name, shape=list(array.shape), datatype=datatype)
            output.set_data_from_numpy(array, binary_data=False)
            outputs.append(output)
        return InferResponse(
            response_id=request.id or str(uuid.uuid4()),
            model_name=self.name,
            infer_outputs=outputs,
            use_binary_outputs=request.use_binary_outputs,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--model_name", default="bin-counter")
    parser.add_argument("--http_port", type=int, required=True)
    args, _ = parser.parse_known_args()
    model = NaiveCounter(args.model_name, args.model_dir)
    model.load()
    model_server(Limits(), http_port=args.http_port, enable_grpc=False, workers=1).start([model])


if __name__ == "__main__":
    main()
