// A Node gRPC client (@grpc/grpc-js with @grpc/grpc-js-xds) on xds:///<target>, like client.py:
// one RPC every 20 ms, "<monotonic seconds> <backend name or ERR:code>" per RPC, until stdin
// closes. GRPC_XDS_BOOTSTRAP_CONFIG points at ruddr.
const grpc = require('@grpc/grpc-js');
require('@grpc/grpc-js-xds').register();

const target = process.argv[2];
const identity = (b) => b;
const client = new grpc.Client(`xds:///${target}`, grpc.credentials.createInsecure());
let stop = false;
process.stdin.on('end', () => { stop = true; });
process.stdin.resume();

function once() {
  if (stop) { client.close(); process.exit(0); }
  const deadline = new Date(Date.now() + 2000);
  client.makeUnaryRequest('/ruddr.test.Echo/Who', identity, identity, Buffer.alloc(0), { deadline },
    (err, reply) => {
      const secs = Number(process.hrtime.bigint()) / 1e9;
      const what = err ? `ERR:${grpc.status[err.code]}` : reply.toString();
      process.stdout.write(`${secs.toFixed(3)} ${what}\n`);
      setTimeout(once, 20);
    });
}
once();
