using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Weft.Hbone;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Hbone;

/// <summary>How a stream's bytes move between the application and the transport: on the thread that has them, without a hand-off.</summary>
public class HboneSendPathTests
{
    [Fact]
    public async Task OutputFlush_WithWindowOpen_HasPutTheDataFrameOnTheTransportWhenItReturns()
    {
        WriteCountingStream? transport = null;
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoHandler, clientTransport: socket => transport = new WriteCountingStream(socket));
        HboneStream stream = await tunnel.ConnectAsync();

        // One exchange first, so the stream's send loop has started and waits for the next bytes.
        await stream.Output.WriteAsync(new byte[] { 1 });
        Assert.Equal(new byte[] { 1 }, await ReadExactlyAsync(stream.Input, 1).WaitAsync(Patience));
        await Task.Delay(200);

        byte[] request = new byte[1024];
        Random.Shared.NextBytes(request);
        long before = transport!.BytesWritten;
        await stream.Output.WriteAsync(request);
        long written = transport.BytesWritten - before;

        // A 9-byte DATA header and the payload, written by the flush itself rather than later by another thread.
        Assert.True(written >= request.Length + 9, $"{written} bytes reached the transport when the flush returned");
        Assert.Equal(request, await ReadExactlyAsync(stream.Input, request.Length).WaitAsync(Patience));
        await stream.Output.CompleteAsync();
        Assert.Empty(await ReadToEndAsync(stream.Input).WaitAsync(Patience));
        await stream.DisposeAsync();
    }

    [Fact]
    public async Task InputRead_ResumedOnReadLoop_RunsBeforeTheConnectionReadsTheTransportAgain()
    {
        WriteCountingStream? transport = null;
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoHandler, clientTransport: socket => transport = new WriteCountingStream(socket));
        HboneStream stream = await tunnel.ConnectAsync();
        stream.ResumeReadsOnReadLoop();
        byte[] request = new byte[1024];
        Random.Shared.NextBytes(request);

        // The reader resumes on the connection's read loop, in the same turn that parsed the DATA frame:
        // no hand-off to another thread, so the loop has not gone back to the transport yet.
        Task<(byte[] Bytes, bool TransportReadPending)> echoed = ReadOnceAsync(stream, transport!);
        await stream.Output.WriteAsync(request);
        var (bytes, transportReadPending) = await echoed.WaitAsync(Patience);

        Assert.False(transportReadPending, "the connection was already waiting on the transport when the reader resumed");
        Assert.Equal(request, bytes);
        await stream.Output.CompleteAsync();
        Assert.Empty(await ReadToEndAsync(stream.Input).WaitAsync(Patience));
        await stream.DisposeAsync();
    }

    private static async Task<(byte[] Bytes, bool TransportReadPending)> ReadOnceAsync(HboneStream stream, WriteCountingStream transport)
    {
        // ConfigureAwait(false): observe the thread the data arrived on, not the test framework's context.
        ReadResult result = await stream.Input.ReadAtLeastAsync(1024).ConfigureAwait(false);
        bool pending = transport.ReadPending;
        byte[] bytes = result.Buffer.Slice(0, 1024).ToArray();
        stream.Input.AdvanceTo(result.Buffer.GetPosition(1024));
        return (bytes, pending);
    }

    /// <summary>The client's real socket stream, counting what the connection hands it to send.</summary>
    private sealed class WriteCountingStream(NetworkStream inner) : TransportWrapper(inner)
    {
        private long _bytesWritten;
        private int _readsPending;

        /// <summary>True while the connection waits in a read on this transport.</summary>
        public bool ReadPending => Volatile.Read(ref _readsPending) > 0;

        public long BytesWritten => Interlocked.Read(ref _bytesWritten);

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            await Inner.WriteAsync(buffer, cancellationToken);
            Interlocked.Add(ref _bytesWritten, buffer.Length);
        }

        public override void Write(byte[] buffer, int offset, int count)
        {
            Inner.Write(buffer, offset, count);
            Interlocked.Add(ref _bytesWritten, count);
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _readsPending);
            try
            {
                return await Inner.ReadAsync(buffer, cancellationToken);
            }
            finally
            {
                Interlocked.Decrement(ref _readsPending);
            }
        }
    }
}
