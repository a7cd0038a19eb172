using System.IO.Pipelines;
using System.Net.Sockets;

namespace Weft.Proxy;

/// <summary>
/// Copies bytes both ways between a client socket and its upstream until both directions end.
/// <code>
///   client ──receive──► pipe ──send──► upstream socket      (SocketRelay: one Pipe per direction)
///   client ◄──send───── pipe ◄─receive─ upstream socket
///
///   client ──receive──► stream.Output ─► tunnel            (StreamRelay: the tunnel stream's own pipes)
///   client ◄──send───── stream.Input  ◄─ tunnel
/// </code>
/// A FIN on one side becomes a shutdown(SHUT_WR) (or END_STREAM) on the other once the pipe drains:
/// half-close is carried across. A reset on one side becomes a reset on the other. Idle sockets hold
/// no buffer: each receive first waits with a zero-byte read.
/// </summary>
internal sealed class SocketRelay
{
    // Backpressure: a direction stops reading once this much waits to be sent.
    private static readonly PipeOptions Options = new(
        pool: null,
        readerScheduler: PipeScheduler.Inline,
        writerScheduler: PipeScheduler.Inline,
        pauseWriterThreshold: 256 * 1024,
        resumeWriterThreshold: 128 * 1024,
        minimumSegmentSize: RelayPumps.SegmentSize,
        useSynchronizationContext: false);

    private readonly Socket _a;
    private readonly Socket _b;
    private readonly IRelayObserver _observer;

    public SocketRelay(Socket a, Socket b, IRelayObserver observer)
    {
        _a = a;
        _b = b;
        _observer = observer;
    }

    /// <summary>Runs until both directions finish; never throws for peer behaviour.</summary>
    public Task RunAsync()
    {
        var aToB = new Pipe(Options);
        var bToA = new Pipe(Options);
        return Task.WhenAll(
            RelayPumps.SocketToPipeAsync(_a, aToB.Writer, _observer, fromA: true, onReset: () => RelayPumps.Reset(_b)),
            RelayPumps.PipeToSocketAsync(aToB.Reader, _b, onFailure: () => RelayPumps.Reset(_a)),
            RelayPumps.SocketToPipeAsync(_b, bToA.Writer, _observer, fromA: false, onReset: () => RelayPumps.Reset(_a)),
            RelayPumps.PipeToSocketAsync(bToA.Reader, _a, onFailure: () => RelayPumps.Reset(_b)));
    }

    /// <summary>Ends both sides at once with a reset (idle timeout, agent shutdown, policy).</summary>
    public void Abort()
    {
        RelayPumps.Reset(_a);
        RelayPumps.Reset(_b);
    }
}

/// <summary>The two halves every relay is made of: socket → pipe and pipe → socket.</summary>
internal static class RelayPumps
{
    public const int SegmentSize = 16 * 1024;

    /// <summary>
    /// Receives from <paramref name="source"/> into <paramref name="writer"/> until end of stream
    /// (completes the writer: the other side sees a half-close) or a reset (calls <paramref name="onReset"/>).
    /// </summary>
    public static async Task SocketToPipeAsync(Socket source, PipeWriter writer, IRelayObserver observer, bool fromA, Action onReset)
    {
        Exception? error = null;
        try
        {
            while (true)
            {
                // Wait for data without holding a buffer.
                await source.ReceiveAsync(Memory<byte>.Empty, SocketFlags.None).ConfigureAwait(false);
                var memory = writer.GetMemory(SegmentSize);
                var read = await source.ReceiveAsync(memory, SocketFlags.None).ConfigureAwait(false);
                if (read == 0)
                {
                    break;
                }

                writer.Advance(read);
                observer.OnBytes(fromA, read);
                var flush = await writer.FlushAsync().ConfigureAwait(false);
                if (flush.IsCompleted || flush.IsCanceled)
                {
                    break;
                }
            }
        }
        catch (SocketException e)
        {
            // The source reset or we aborted: the other side must see a reset too, not a clean end.
            error = e;
            onReset();
        }
        catch (ObjectDisposedException e)
        {
            error = e;
        }
        catch (InvalidOperationException e)
        {
            // The writer's far side went away (a tunnel stream reset while we were writing).
            error = e;
            onReset();
        }
        finally
        {
            await writer.CompleteAsync(error).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Sends what <paramref name="reader"/> yields to <paramref name="destination"/>; a clean end becomes
    /// shutdown(SHUT_WR), a failed reader or a failed send calls <paramref name="onFailure"/>.
    /// </summary>
    /// <paramref name="observer"/>, when given, is told of the bytes as they are sent (a tunnel stream's
    /// side has no receive loop of ours to count them).
    public static async Task PipeToSocketAsync(PipeReader reader, Socket destination, Action onFailure,
        IRelayObserver? observer = null, bool fromA = false)
    {
        var clean = false;
        try
        {
            while (true)
            {
                var result = await reader.ReadAsync().ConfigureAwait(false);
                var buffer = result.Buffer;
                foreach (var segment in buffer)
                {
                    // On a stream socket SendAsync completes only when every byte is queued.
                    await destination.SendAsync(segment, SocketFlags.None).ConfigureAwait(false);
                }

                if (observer is not null && !buffer.IsEmpty)
                {
                    observer.OnBytes(fromA, (int)buffer.Length);
                }

                reader.AdvanceTo(buffer.End);
                if (result.IsCompleted || result.IsCanceled)
                {
                    clean = result.IsCompleted;
                    break;
                }
            }
        }
        catch (SocketException)
        {
            // The destination went away: reset it and tell the source side.
            Reset(destination);
            onFailure();
        }
        catch (ObjectDisposedException)
        {
        }
        catch (Exception)
        {
            // The writing side completed with an error (it saw a reset): pass the reset on.
            Reset(destination);
        }
        finally
        {
            await reader.CompleteAsync().ConfigureAwait(false);
        }

        if (clean)
        {
            try
            {
                destination.Shutdown(SocketShutdown.Send);
            }
            catch (SocketException)
            {
            }
            catch (ObjectDisposedException)
            {
            }
        }
    }

    /// <summary>Closes with SO_LINGER 0, so the peer sees RST rather than FIN.</summary>
    public static void Reset(Socket socket)
    {
        try
        {
            socket.LingerState = new LingerOption(true, 0);
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }

        socket.Dispose();
    }
}

/// <summary>Told of every chunk that crosses a relay, from the receiving loop (no allocation).</summary>
internal interface IRelayObserver
{
    void OnBytes(bool fromA, int count);
}
