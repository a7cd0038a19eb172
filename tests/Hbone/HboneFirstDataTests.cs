using System.Security.Cryptography;
using Weft.Hbone;
using static Weft.Tests.Hbone.HboneTestKit;

namespace Weft.Tests.Hbone;

/// <summary>
/// A CONNECT that carries the client's first bytes: they go out right behind the request, so the server has them before
/// it answers (one crossing for a new connection's first round trip, not two), and arrive exactly once, in order.
/// </summary>
public class HboneFirstDataTests
{
    private static readonly TimeSpan Short = TimeSpan.FromSeconds(5);

    [Fact]
    public async Task FirstData_IsAtTheServerBeforeItAnswers_AndArrivesOnce()
    {
        byte[] first = RandomNumberGenerator.GetBytes(3000);
        var beforeAnswer = new TaskCompletionSource<byte[]>();
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoAfterReading(first.Length, beforeAnswer));

        HboneStream client = await tunnel.Client.ConnectAsync("10.0.0.1:8080", [], CancellationToken.None, first).WaitAsync(Patience);
        Assert.Equal(first, await beforeAnswer.Task.WaitAsync(Patience));
        await WriteAsync(client.Output, "and after");
        await client.Output.CompleteAsync();

        byte[] expected = [.. first, .. "and after"u8.ToArray()];
        Assert.Equal(expected, await ReadToEndAsync(client.Input).WaitAsync(Patience));
        await client.DisposeAsync();
    }

    [Fact]
    public async Task FirstData_PastTheStreamWindow_WhatDidNotFitFollowsTheAnswer()
    {
        // The server's stream window is the protocol's default, 65,535 bytes, and one write turn carries at most four
        // record-sized DATA frames (65,500 bytes): the rest of 200,000 waits for the answer.
        byte[] first = RandomNumberGenerator.GetBytes(200_000);
        int sentFirst = Math.Min(HboneSettings.DefaultWindowSize, HboneStream.RecordAlignedSend);
        var server = new HboneSettings { KeepaliveInterval = Timeout.InfiniteTimeSpan, StreamWindow = HboneSettings.DefaultWindowSize };
        var beforeAnswer = new TaskCompletionSource<long>();
        await using var tunnel = await LoopbackTunnel.StartAsync(async request =>
        {
            var read = await request.Stream.Input.ReadAtLeastAsync(sentFirst).AsTask().WaitAsync(Patience);
            beforeAnswer.TrySetResult(read.Buffer.Length);
            request.Stream.Input.AdvanceTo(read.Buffer.Start); // left for the echo
            HboneStream stream = await request.AcceptAsync();
            await EchoAsync(stream);
        }, server);

        HboneStream client = await tunnel.Client.ConnectAsync("10.0.0.1:8080", [], CancellationToken.None, first).WaitAsync(Patience);
        Assert.Equal((long)sentFirst, await beforeAnswer.Task.WaitAsync(Patience));
        await client.Output.CompleteAsync();

        Assert.Equal(first, await ReadToEndAsync(client.Input).WaitAsync(Patience));
        await client.DisposeAsync();
    }

    [Fact]
    public async Task LateData_ThatComesBeforeTheAnswer_IsSentAtOnce_AndIsAtTheServerBeforeItAnswers()
    {
        var beforeAnswer = new TaskCompletionSource<byte[]>();
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoAfterReading(5, beforeAnswer));

        // Nothing when the stream opens; the client's bytes come 100 ms later, long before any answer would.
        HboneStream client = await tunnel.Client.ConnectAsync("10.0.0.1:8080", [], CancellationToken.None, default, async _ =>
        {
            await Task.Delay(100);
            return "late!"u8.ToArray();
        }).WaitAsync(Patience);
        Assert.Equal("late!"u8.ToArray(), await beforeAnswer.Task.WaitAsync(Patience));
        await client.Output.CompleteAsync();

        Assert.Equal("late!"u8.ToArray(), await ReadToEndAsync(client.Input).WaitAsync(Patience));
        await client.DisposeAsync();
    }

    [Fact]
    public async Task LateData_WhenTheAnswerComesFirst_TheWaitIsCancelled_AndNothingIsSentForIt()
    {
        await using var tunnel = await LoopbackTunnel.StartAsync(EchoHandler);
        var cancelled = new TaskCompletionSource<bool>(TaskCreationOptions.RunContinuationsAsynchronously);

        HboneStream client = await tunnel.Client.ConnectAsync("10.0.0.1:8080", [], CancellationToken.None, default, async ct =>
        {
            await Task.Delay(Timeout.Infinite, ct).ContinueWith(_ => { }, TaskScheduler.Default);
            cancelled.TrySetResult(ct.IsCancellationRequested);
            return ReadOnlyMemory<byte>.Empty;
        }).WaitAsync(Patience);

        Assert.True(await cancelled.Task.WaitAsync(Patience));
        await WriteAsync(client.Output, "after the answer");
        await client.Output.CompleteAsync();
        Assert.Equal("after the answer"u8.ToArray(), await ReadToEndAsync(client.Input).WaitAsync(Patience));
        await client.DisposeAsync();
    }

    [Fact]
    public async Task FirstData_OfARejectedStream_IsDiscarded_AndTheTunnelCarriesTheNextStream()
    {
        var calls = 0;
        await using var tunnel = await LoopbackTunnel.StartAsync(request =>
            Interlocked.Increment(ref calls) == 1 ? request.RejectAsync(403) : EchoHandler(request));

        var error = await Assert.ThrowsAsync<HboneException>(() =>
            tunnel.Client.ConnectAsync("10.0.0.1:8080", [], CancellationToken.None, "never delivered"u8.ToArray()).WaitAsync(Patience));
        Assert.Equal(403, error.StatusCode);

        HboneStream next = await tunnel.Client.ConnectAsync("10.0.0.1:8080", [], CancellationToken.None, "next"u8.ToArray()).WaitAsync(Patience);
        await next.Output.CompleteAsync();
        Assert.Equal("next"u8.ToArray(), await ReadToEndAsync(next.Input).WaitAsync(Patience));
        await next.DisposeAsync();
    }

    /// <summary>
    /// A server that reads <paramref name="count"/> bytes before it answers (none came within 5 s: a 504, and an empty
    /// <paramref name="beforeAnswer"/>; the client sends nothing else until answered), then echoes them and the rest.
    /// </summary>
    private static Func<HboneRequest, Task> EchoAfterReading(int count, TaskCompletionSource<byte[]> beforeAnswer) => async request =>
    {
        byte[] early;
        try
        {
            early = await ReadExactlyAsync(request.Stream.Input, count).WaitAsync(Short);
        }
        catch (TimeoutException)
        {
            beforeAnswer.TrySetResult([]);
            await request.RejectAsync(504);
            return;
        }
        beforeAnswer.TrySetResult(early);
        HboneStream stream = await request.AcceptAsync();
        await stream.Output.WriteAsync(early);
        await EchoAsync(stream);
    };
}
