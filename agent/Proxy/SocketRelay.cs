using System.IO.Pipelines;
using System.Net.Sockets;

namespace Weft.Proxy;

/// <summary>
/// Copies bytes both ways between two connected sockets until both directions have ended.
/// <code>
///   a ──receive──► pipe a→b ──send──► b      (one pipe per direction, pooled segments)
///   a ◄──send───── pipe b→a ◄─receive─ b
/// </code>
/// A FIN on one side becomes a shutdown(SHUT_WR) on the other once the pipe drains (half-close is
/// carried across); a reset on one side becomes a reset on the other. Idle sockets hold no buffer:
/// each receive first waits with a zero-byte read, so 10,000 idle connections cost no pooled memory.
/// </summary>
internal sealed class SocketRelay
{
    private const int SegmentSize = 16 * 1024;

    // Backpressure: a direction stops reading once this much waits to be sent.
    private static readonly PipeOptions Options = new(
        pool: null,
        readerScheduler: PipeScheduler.Inline,
        writerScheduler: PipeScheduler.Inline,
        pauseWriterThreshold: 256 * 1024,
        resumeWriterThreshold: 128 * 1024,
        minimumSegmentSize: SegmentSize,
        useSynchronizationContext: false);

    private readonly Socket _a;
    private readonly Socket _b;
    private readonly IRelayObserver _observer;
    private int _resetSent;

    public SocketRelay(Socket a, Socket b, IRelayObserver observer)
    {
        _a = a;
        _b = b;
        _observer = observer;
    }

    /// <summary>Runs until both directions finish; never throws for peer behaviour.</summary>
    public async Task RunAsync()
    {
        var aToB = new Pipe(Options);
        var bToA = new Pipe(Options);
        var tasks = new[]
        {
            ReceiveAsync(_a, _b, aToB.Writer, fromA: true),
            SendAsync(aToB.Reader, _b),
            ReceiveAsync(_b, _a, bToA.Writer, fromA: false),
            SendAsync(bToA.Reader, _a),
        };
        await Task.WhenAll(tasks).ConfigureAwait(false);
    }

    /// <summary>Ends both sides at once with a reset (idle timeout, agent shutdown, policy).</summary>
    public void Abort()
    {
        Reset(_a);
        Reset(_b);
    }

    private async Task ReceiveAsync(Socket source, Socket peer, PipeWriter writer, bool fromA)
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
                _observer.OnBytes(fromA, read);
                var flush = await writer.FlushAsync().ConfigureAwait(false);
                if (flush.IsCompleted)
                {
                    break;
                }
            }
        }
        catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionReset or SocketError.OperationAborted
                                            or SocketError.ConnectionAborted or SocketError.Shutdown or SocketError.TimedOut)
        {
            // The source reset or we aborted: the peer must see a reset too, not a clean end of stream.
            error = e;
            Reset(peer);
        }
        catch (ObjectDisposedException e)
        {
            error = e;
        }
        finally
        {
            await writer.CompleteAsync(error).ConfigureAwait(false);
        }
    }

    private async Task SendAsync(PipeReader reader, Socket destination)
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

                reader.AdvanceTo(buffer.End);
                if (result.IsCompleted)
                {
                    clean = true;
                    break;
                }
            }
        }
        catch (SocketException)
        {
            // The destination went away: stop reading its source so the other side learns of it.
            Reset(destination);
        }
        catch (ObjectDisposedException)
        {
        }
        catch (Exception)
        {
            // The receiver completed the pipe with an error (a reset): the reset was already sent.
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

    private void Reset(Socket socket)
    {
        Interlocked.Exchange(ref _resetSent, 1);
        try
        {
            socket.LingerState = new LingerOption(true, 0);
            socket.Close();
        }
        catch (ObjectDisposedException)
        {
        }
        catch (SocketException)
        {
        }
    }

    public bool WasReset => Volatile.Read(ref _resetSent) == 1;
}

/// <summary>Told of every chunk that crosses a relay, from the receiving loop (no allocation).</summary>
internal interface IRelayObserver
{
    void OnBytes(bool fromA, int count);
}
