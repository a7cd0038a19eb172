using System.Net;
using System.Net.Sockets;
using Weft.Proxy;

namespace Weft.Tests.Proxy;

/// <summary>
/// A client's first bytes, taken off its socket around its tunnel stream's opening (<see cref="FirstBytes"/>): what it has
/// sent, or what it sends before the answer, at most 4 KiB, never a wait; within the per-agent budget of buffers, past
/// which the bytes stay in the socket for the relay.
/// </summary>
public sealed class FirstBytesTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task WhatTheClientSent_IsTaken_TheSameOnASecondRead_AndTheBufferGoesBackOnDispose()
    {
        using var rig = await Rig.StartAsync();
        await rig.SendAsync("GET / HTTP/1.1\r\n\r\n"u8.ToArray());

        Assert.Equal("GET / HTTP/1.1\r\n\r\n"u8.ToArray(), rig.First.Read().ToArray());
        Assert.Equal("GET / HTTP/1.1\r\n\r\n"u8.ToArray(), rig.First.Read().ToArray());
        Assert.Equal((18, 1, 0), (rig.First.Length, rig.Budget.Held, rig.Accepted.Available));

        rig.First.Dispose();
        Assert.Equal(0, rig.Budget.Held);
    }

    [Fact]
    public async Task MoreThanFourKiB_TheRestStaysInTheSocket()
    {
        using var rig = await Rig.StartAsync();
        var sent = Enumerable.Range(0, 10_000).Select(i => (byte)i).ToArray();
        await rig.SendAsync(sent);

        Assert.Equal(sent[..FirstBytes.Size], rig.First.Read().ToArray());
        var rest = new byte[sent.Length];
        Assert.Equal(sent.Length - FirstBytes.Size, rig.Accepted.Receive(rest));
        Assert.Equal(sent[FirstBytes.Size..], rest[..(sent.Length - FirstBytes.Size)]);
    }

    [Fact]
    public async Task NothingSentYet_GivesNothing_HoldsNoBuffer_AndLaterBytesStayForTheRelay()
    {
        using var rig = await Rig.StartAsync();

        Assert.True(rig.First.Read().IsEmpty);
        Assert.Equal(0, rig.Budget.Held);

        await rig.SendAsync("late"u8.ToArray());
        Assert.True(rig.First.Read().IsEmpty); // read once, when the stream opened
        Assert.Equal(4, rig.Accepted.Receive(new byte[8]));
    }

    [Fact]
    public async Task NothingAtFirst_LaterAsync_GivesTheBytesAsTheyCome_AndTheSocketHasLeftTheWatch()
    {
        using var rig = await Rig.StartAsync();
        Assert.True(rig.First.Read().IsEmpty);

        var later = rig.First.LaterAsync(CancellationToken.None);
        await Task.Delay(50);
        Assert.False(later.IsCompleted);
        rig.Client.Send("hello"u8);

        Assert.Equal("hello"u8.ToArray(), (await later.WaitAsync(Patience)).ToArray());
        Assert.Equal("hello"u8.ToArray(), rig.First.Read().ToArray()); // a retry sends the same
        Assert.Equal((5, 1), (rig.First.Length, rig.Budget.Held));
        AssertARelayMayWatchIt(rig.Accepted);
    }

    [Fact]
    public async Task LaterAsync_Cancelled_GivesNothing_AndLeavesTheBytesAndTheSocketToTheRelay()
    {
        using var rig = await Rig.StartAsync();
        Assert.True(rig.First.Read().IsEmpty);
        using var answered = new CancellationTokenSource();

        var later = rig.First.LaterAsync(answered.Token);
        answered.Cancel();

        Assert.True((await later.WaitAsync(Patience)).IsEmpty);
        await rig.SendAsync("for the relay"u8.ToArray());
        await Task.Delay(50);
        Assert.Equal((0, 0, 13), (rig.First.Length, rig.Budget.Held, rig.Accepted.Available));
        AssertARelayMayWatchIt(rig.Accepted);
    }

    [Fact]
    public async Task PastTheBudget_TheBytesStayInTheSocket_Counted_AndAReturnedBufferServesTheNext()
    {
        var budget = new FirstBytesBudget(2);
        var rigs = new List<Rig>();
        try
        {
            for (var i = 0; i < 4; i++)
            {
                var rig = await Rig.StartAsync(budget);
                rigs.Add(rig);
                await rig.SendAsync([(byte)i, 1, 2]);
            }

            Assert.Equal(3, rigs[0].First.Read().Length);
            Assert.Equal(3, rigs[1].First.Read().Length);
            Assert.True(rigs[2].First.Read().IsEmpty);
            Assert.Equal(3, rigs[2].Accepted.Available); // left for the relay
            Assert.True((await rigs[2].First.LaterAsync(CancellationToken.None)).IsEmpty); // no buffer to wait with either
            Assert.Equal((2, 1L), (budget.Held, budget.Spent));

            rigs[0].First.Dispose();
            Assert.Equal([3, 1, 2], rigs[3].First.Read().ToArray());
            Assert.Equal((2, 1L), (budget.Held, budget.Spent));
        }
        finally
        {
            rigs.ForEach(r => r.Dispose());
        }

        Assert.Equal(0, budget.Held);
    }

    [Fact]
    public async Task ClientThatReset_FailsTheRead_AndHoldsNothing()
    {
        using var rig = await Rig.StartAsync();
        rig.Client.LingerState = new LingerOption(true, 0);
        rig.Client.Dispose(); // RST
        await Task.Delay(50);

        var error = Assert.Throws<SocketException>(() => rig.First.Read());
        Assert.Equal(SocketError.ConnectionReset, error.SocketErrorCode);
        Assert.True(rig.First.ClientFailed);
        Assert.Equal(0, rig.Budget.Held);
    }

    /// <summary>The socket is out of the read watch's epoll set: a relay's first arm (EPOLL_CTL_ADD) takes it.</summary>
    private static void AssertARelayMayWatchIt(Socket socket)
    {
        var id = ReadWatch.Shared.Register(new NoWork());
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

    /// <summary>A client connected over loopback, the agent's side of it, and its <see cref="FirstBytes"/>.</summary>
    private sealed class Rig(Socket client, Socket accepted, FirstBytesBudget budget) : IDisposable
    {
        public Socket Client { get; } = client;

        public Socket Accepted { get; } = accepted;

        public FirstBytesBudget Budget { get; } = budget;

        public FirstBytes First { get; } = new(accepted, budget);

        public static async Task<Rig> StartAsync(FirstBytesBudget? budget = null)
        {
            using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen();
            var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            await client.ConnectAsync(listener.LocalEndPoint!);
            return new Rig(client, await listener.AcceptAsync(), budget ?? new FirstBytesBudget(4));
        }

        /// <summary>Sends from the client and waits until the agent's side has it all.</summary>
        public async Task SendAsync(byte[] bytes)
        {
            var before = Accepted.Available;
            Client.Send(bytes);
            var deadline = DateTime.UtcNow + Patience;
            while (Accepted.Available < before + bytes.Length && DateTime.UtcNow < deadline)
            {
                await Task.Delay(5);
            }
            Assert.True(Accepted.Available >= before + bytes.Length, $"{Accepted.Available - before} of {bytes.Length} bytes arrived");
        }

        public void Dispose()
        {
            First.Dispose();
            Client.Dispose();
            Accepted.Dispose();
        }
    }
}
