// Drives @huggingface/inference, unchanged, against a live server: the calls a web app makes.
// Usage: node client.mjs <endpointUrl> <token>. Prints one JSON line of what came back.
import { imageToImage, textToImage } from "@huggingface/inference";

const [endpointUrl, accessToken] = process.argv.slice(2);

async function describe(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const view = new DataView(bytes.buffer);
  // A PNG's IHDR chunk holds width and height at bytes 16-23.
  return { type: blob.type, bytes: bytes.length, png: bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47,
           width: view.getUint32(16), height: view.getUint32(20) };
}

const generated = await textToImage({
  endpointUrl, accessToken, inputs: "a lighthouse at dusk",
  parameters: { width: 320, height: 256, num_inference_steps: 2, seed: 5 },
});
const edited = await imageToImage({
  endpointUrl, accessToken, inputs: generated,
  parameters: { prompt: "the same lighthouse at night", strength: 0.5, num_inference_steps: 4 },
});
let rejected = null;
try {
  await textToImage({ endpointUrl, accessToken: "wrong-token", inputs: "x", parameters: { num_inference_steps: 2 } });
} catch (error) {
  rejected = String(error.message);
}
console.log(JSON.stringify({ generated: await describe(generated), edited: await describe(edited), rejected }));
