using Microsoft.AspNetCore.Http;

namespace Weft.Gateway;

/// <summary>
/// The response body as the forwarder writes it to the client, with nginx's <c>send_timeout</c>: one write (or
/// flush) that the client does not take within <see cref="GatewayOptions.ResponseSendTimeout"/> aborts the request
/// (HTTP/1.1: the connection; HTTP/2: the stream) and is counted. Kestrel's minimum response rate alone does not
/// bound this: it credits every byte the kernel's socket buffers absorbed at the minimum rate, so a client that
/// stops reading a large response would hold the connection, the backend's connection and their buffers for
/// (buffered bytes / 240) seconds, over an hour for a megabyte. A write the client takes at once costs nothing
/// more than the call; only a write that waits gets a timer.
/// </summary>
internal sealed class ResponseSendTimeout(Stream inner, HttpContext context, TimeSpan timeout, GatewayMetrics metrics) : Stream
{
    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ThrowIfClientGone();
        var write = inner.WriteAsync(buffer, cancellationToken);
        return write.IsCompletedSuccessfully ? default : WithinAsync(write.AsTask());
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override Task FlushAsync(CancellationToken cancellationToken)
    {
        ThrowIfClientGone();
        var flush = inner.FlushAsync(cancellationToken);
        return flush.IsCompletedSuccessfully ? Task.CompletedTask : WithinAsync(flush).AsTask();
    }

    /// <summary>
    /// Once the client's connection is aborted (this timeout, a Kestrel limit, the client's reset), Kestrel takes every
    /// write at once and drops it. YARP also stops reading the backend when RequestAborted fires, but Kestrel cancels that
    /// token from the thread pool, late on a loaded machine: failing the write makes the forwarder let go of the backend
    /// at once instead of pulling its response into nothing until then.
    /// </summary>
    private void ThrowIfClientGone()
    {
        if (context.RequestAborted.IsCancellationRequested)
        {
            throw new IOException("the client's connection was aborted: the rest of the response is not read from the backend");
        }
    }

    private async ValueTask WithinAsync(Task pending)
    {
        try
        {
            await pending.WaitAsync(timeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            metrics.ClientCut("response_stalled");
            context.Abort();

            // The aborted write still ends (faulted or canceled): observe it so it is not reported as unobserved.
            _ = pending.ContinueWith(static t => t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            throw new IOException($"the client took no part of the response for {timeout.TotalSeconds:0.#} s (send timeout): request aborted");
        }
    }

    public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override void Flush() => FlushAsync(CancellationToken.None).GetAwaiter().GetResult();

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}
