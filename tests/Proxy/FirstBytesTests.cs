using System.Net;
using System.Net.Sockets;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

/// <summary>
/// A client's first bytes, taken off its socket before its tunnel stream opens (<see cref="FirstBytes"/>): only what it
/// has sent, at most 4 KiB, never a wait; within the per-agent budget of buffers, past which the bytes stay in the socket.
/// </summary>
public sealed class FirstBytesTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task WhatTheClientSent_IsTaken_TheSameOnASecondRead_AndTheBufferGoesBackOnDispose()
    {
        var (client, accepted) = await PairAsync();
        using (client)
        using (accepted)
        {
            client.Send("GET / HTTP/1.1\r\n\r\n"u8);
            await ArrivedAsync(accepted, 18);
            var budget = new FirstBytesBudget(4);
            var first = new FirstBytes(accepted, budget);

            Assert.Equal("GET / HTTP/1.1\r\n\r\n"u8.ToArray(), first.Read().ToArray());
            Assert.Equal("GET / HTTP/1.1\r\n\r\n"u8.ToArray(), first.Read().ToArray());
            Assert.Equal(18, first.Length);
            Assert.Equal(1, budget.Held);
            Assert.Equal(0, accepted.Available);

            first.Dispose();
            Assert.Equal(0, budget.Held);
        }
    }

    [Fact]
    public async Task MoreThanFourKiB_TheRestStaysInTheSocket()
    {
        var (client, accepted) = await PairAsync();
        using (client)
        using (accepted)
        {
            var sent = Enumerable.Range(0, 10_000).Select(i => (byte)i).ToArray();
            client.Send(sent);
            await ArrivedAsync(accepted, sent.Length);
            using var first = new FirstBytes(accepted, new FirstBytesBudget(4));

            Assert.Equal(sent[..FirstBytes.Size], first.Read().ToArray());
            var rest = new byte[sent.Length];
            Assert.Equal(sent.Length - FirstBytes.Size, accepted.Receive(rest));
            Assert.Equal(sent[FirstBytes.Size..], rest[..(sent.Length - FirstBytes.Size)]);
        }
    }

    [Fact]
    public async Task NothingSentYet_GivesNothing_HoldsNoBuffer_AndLaterBytesStayForTheRelay()
    {
        var (client, accepted) = await PairAsync();
        using (client)
        using (accepted)
        {
            var budget = new FirstBytesBudget(4);
            using var first = new FirstBytes(accepted, budget);

            Assert.True(first.Read().IsEmpty);
            Assert.Equal(0, budget.Held);

            client.Send("late"u8);
            await ArrivedAsync(accepted, 4);
            Assert.True(first.Read().IsEmpty); // read once, when the stream opened
            var buffer = new byte[8];
            Assert.Equal(4, accepted.Receive(buffer));
        }
    }

    [Fact]
    public async Task NothingAtFirst_LaterAsync_GivesTheBytesAsTheyCome_AndTheSocketHasLeftTheWatch()
    {
        var (client, accepted) = await PairAsync();
        using (client)
        using (accepted)
        {
            var budget = new FirstBytesBudget(4);
            using var first = new FirstBytes(accepted, budget);
            Assert.True(first.Read().IsEmpty);

            var later = first.LaterAsync(CancellationToken.None);
            await Task.Delay(50);
            Assert.False(later.IsCompleted);
            client.Send("hello"u8);

            Assert.Equal("hello"u8.ToArray(), (await later.WaitAsync(Patience)).ToArray());
            Assert.Equal("hello"u8.ToArray(), first.Read().ToArray()); // a retry sends the same
            Assert.Equal((5, 1), (first.Length, budget.Held));
            AssertARelayMayWatchIt(accepted);
        }
    }

    [Fact]
    public async Task LaterAsync_Cancelled_GivesNothing_AndLeavesTheBytesAndTheSocketToTheRelay()
    {
        var (client, accepted) = await PairAsync();
        using (client)
        using (accepted)
        {
            var budget = new FirstBytesBudget(4);
            using var first = new FirstBytes(accepted, budget);
            Assert.True(first.Read().IsEmpty);
            using var answered = new CancellationTokenSource();

            var later = first.LaterAsync(answered.Token);
            answered.Cancel();

            Assert.True((await later.WaitAsync(Patience)).IsEmpty);
            client.Send("for the relay"u8);
            await ArrivedAsync(accepted, 13);
            await Task.Delay(50);
            Assert.Equal((0, 0), (first.Length, budget.Held));
            AssertARelayMayWatchIt(accepted);
        }
    }

    /// <summary>The socket is out of the read watch's epoll set: a relay's first arm (EPOLL_CTL_ADD) takes it.</summary>
    private static void AssertARelayMayWatchIt(Socket socket)
    {
        var relay = new NoWork();
        var id = ReadWatch.Shared.Register(relay);
        try
        {
            Assert.True(ReadWatch.Shared.Arm(socket, id, first: true), "the socket is still in the read watch");
        }
        finally
        {
            ReadWatch.Shared.Leave(socket, id);
        }
    }

    private sealed class NoWork : IReadReady
    {
        public void Execute()
        {
        }
    }

    [Fact]
    public async Task PastTheBudget_TheBytesStayInTheSocket_Counted_AndAReturnedBufferServesTheNext()
    {
        var budget = new FirstBytesBudget(2);
        var pairs = new List<(Socket Client, Socket Accepted)>();
        var firsts = new List<FirstBytes>();
        try
        {
            for (var i = 0; i < 4; i++)
            {
                var pair = await PairAsync();
                pairs.Add(pair);
                pair.Client.Send([(byte)i, 1, 2]);
                await ArrivedAsync(pair.Accepted, 3);
                firsts.Add(new FirstBytes(pair.Accepted, budget));
            }

            Assert.Equal(3, firsts[0].Read().Length);
            Assert.Equal(3, firsts[1].Read().Length);
            Assert.True(firsts[2].Read().IsEmpty);
            Assert.Equal(3, pairs[2].Accepted.Available); // left for the relay
            Assert.Equal((2, 1L), (budget.Held, budget.Spent));

            firsts[0].Dispose();
            Assert.Equal([3, 1, 2], firsts[3].Read().ToArray());
            Assert.Equal((2, 1L), (budget.Held, budget.Spent));
        }
        finally
        {
            firsts.ForEach(f => f.Dispose());
            pairs.ForEach(p => { p.Client.Dispose(); p.Accepted.Dispose(); });
        }

        Assert.Equal(0, budget.Held);
    }

    [Fact]
    public async Task ClientThatReset_FailsTheRead_AndHoldsNothing()
    {
        var (client, accepted) = await PairAsync();
        using (accepted)
        {
            client.LingerState = new LingerOption(true, 0);
            client.Dispose(); // RST
            await Task.Delay(50);
            var budget = new FirstBytesBudget(4);
            using var first = new FirstBytes(accepted, budget);

            var error = Assert.Throws<SocketException>(() => first.Read());
            Assert.Equal(SocketError.ConnectionReset, error.SocketErrorCode);
            Assert.True(first.ClientFailed);
            Assert.Equal(0, budget.Held);
        }
    }

    private static async Task<(Socket Client, Socket Accepted)> PairAsync()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(listener.LocalEndPoint!);
        var accepted = await listener.AcceptAsync();
        return (client, accepted);
    }

    private static async Task ArrivedAsync(Socket socket, int count)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (socket.Available < count && DateTime.UtcNow < deadline)
        {
            await Task.Delay(5);
        }
        Assert.True(socket.Available >= count, $"{socket.Available} of {count} bytes arrived");
    }
}
