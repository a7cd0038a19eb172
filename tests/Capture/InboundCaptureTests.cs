using System.Net;
using System.Net.Sockets;
using Weft.Capture;

namespace Weft.Tests.Capture;

/// <summary>
/// sk_lookup on a real kernel: SYNs for the pod's address from another namespace land on the
/// agent's in-pod 15006 listener; the pod's own traffic does not; no listener means refused.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.Kernel)]
public sealed class InboundCaptureTests
{
    private const string PodIp = "10.98.0.2";
    private const string PeerIp = "10.98.0.1";

    private static readonly PodCapture Pod = new(IPAddress.Parse(PodIp), null, FailOpen: false);
    private static readonly IPEndPoint AppPort = new(IPAddress.Parse(PodIp), 8080);

    [PrivilegedFact]
    public async Task Inbound_ConnectFromOtherNamespace_IsAcceptedByAgentWithOriginalDestination()
    {
        using var sandbox = new CaptureSandbox();
        var (pod, peer) = sandbox.AddLinkedNamespaces(PodIp + "/24", PeerIp + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Any, 15006));
        using var app = CaptureSandbox.Listen(pod, AppPort);
        capture.EnrollPod(NetNamespace.GetCookie(pod), Pod);
        capture.AttachInbound(pod, Pod, agent);

        using var client = await ConnectFromAsync(peer, AppPort);
        using var accepted = await CaptureSandbox.AcceptAsync(agent);

        Assert.Equal(AppPort, accepted.LocalEndPoint);
        Assert.Equal(client.LocalEndPoint, accepted.RemoteEndPoint);
        Assert.False(app.Poll(0, SelectMode.SelectRead));
    }

    [PrivilegedFact]
    public async Task Inbound_ConnectFromInsidePodToItsOwnAddress_IsNotSteered()
    {
        using var sandbox = new CaptureSandbox();
        var (pod, _) = sandbox.AddLinkedNamespaces(PodIp + "/24", PeerIp + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Any, 15006));
        using var app = CaptureSandbox.Listen(pod, AppPort);
        capture.AttachInbound(pod, Pod, agent);

        using var client = await ConnectFromAsync(pod, AppPort);
        using var accepted = await CaptureSandbox.AcceptAsync(app);

        Assert.Equal(AppPort, accepted.LocalEndPoint);
        Assert.False(agent.Poll(0, SelectMode.SelectRead));
    }

    [PrivilegedFact]
    public async Task Inbound_AgentListenerClosed_RefusesConnectionEvenThoughAppListens()
    {
        using var sandbox = new CaptureSandbox();
        var (pod, peer) = sandbox.AddLinkedNamespaces(PodIp + "/24", PeerIp + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var app = CaptureSandbox.Listen(pod, AppPort);
        var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Any, 15006));
        capture.AttachInbound(pod, Pod, agent);
        agent.Dispose(); // the agent is gone: the kernel drops the listener from the sockmap

        // SK_DROP fails the listener lookup, so the SYN is answered with a RST: connection refused
        var error = await Assert.ThrowsAnyAsync<Exception>(() => ConnectFromAsync(peer, AppPort));
        Assert.True(error is SocketException { SocketErrorCode: SocketError.ConnectionRefused }, error.ToString());
        Assert.False(app.Poll(0, SelectMode.SelectRead)); // nothing leaked to the app in plaintext
    }

    [PrivilegedFact]
    public async Task Inbound_FailOpenPodWithoutAgent_ReachesApp()
    {
        using var sandbox = new CaptureSandbox();
        var (pod, peer) = sandbox.AddLinkedNamespaces(PodIp + "/24", PeerIp + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var app = CaptureSandbox.Listen(pod, AppPort);
        var failOpen = Pod with { FailOpen = true };
        var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Any, 15006));
        capture.AttachInbound(pod, failOpen, agent);
        agent.Dispose();

        using var client = await ConnectFromAsync(peer, AppPort);
        using var accepted = await CaptureSandbox.AcceptAsync(app);
        Assert.Equal(AppPort, accepted.LocalEndPoint);
    }

    [PrivilegedFact]
    public async Task Inbound_UnenrollPod_RemovesItsSkLookupLink()
    {
        using var sandbox = new CaptureSandbox();
        var (pod, peer) = sandbox.AddLinkedNamespaces(PodIp + "/24", PeerIp + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Any, 15006));
        using var app = CaptureSandbox.Listen(pod, AppPort);
        var cookie = NetNamespace.GetCookie(pod);
        capture.EnrollPod(cookie, Pod);
        capture.AttachInbound(pod, Pod, agent);
        Assert.True(File.Exists(Path.Combine(sandbox.PinRoot, "links", "sk_lookup-" + cookie)));

        capture.UnenrollPod(cookie, Pod);

        Assert.False(File.Exists(Path.Combine(sandbox.PinRoot, "links", "sk_lookup-" + cookie)));
        using var client = await ConnectFromAsync(peer, AppPort);
        using var accepted = await CaptureSandbox.AcceptAsync(app);
        Assert.False(agent.Poll(0, SelectMode.SelectRead));
    }

    [PrivilegedFact]
    public async Task Inbound_ConnectToTunnelPort_ReachesAgentsTunnelListenerNotSteered()
    {
        using var sandbox = new CaptureSandbox();
        var (pod, peer) = sandbox.AddLinkedNamespaces(PodIp + "/24", PeerIp + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Any, 15006));
        using var tunnel = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Any, 15008));
        capture.EnrollPod(NetNamespace.GetCookie(pod), Pod);
        capture.AttachInbound(pod, Pod, agent);

        // HBONE from another node's agent arrives this way
        using var client = await ConnectFromAsync(peer, new IPEndPoint(IPAddress.Parse(PodIp), 15008));
        using var accepted = await CaptureSandbox.AcceptAsync(tunnel);
        Assert.Equal(new IPEndPoint(IPAddress.Parse(PodIp), 15008), accepted.LocalEndPoint);
        Assert.False(agent.Poll(0, SelectMode.SelectRead));
    }

    [PrivilegedTheory]
    [InlineData(15001)]
    [InlineData(15000)]
    [InlineData(15020)]
    [InlineData(15021)]
    public async Task Inbound_ConnectToOtherAgentPort_IsSteeredToAgentEvenWhenAppListensThere(int port)
    {
        using var sandbox = new CaptureSandbox();
        var (pod, peer) = sandbox.AddLinkedNamespaces(PodIp + "/24", PeerIp + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Any, 15006));
        using var app = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Parse(PodIp), port));
        capture.EnrollPod(NetNamespace.GetCookie(pod), Pod);
        capture.AttachInbound(pod, Pod, agent);

        // the agent sees the agent port as the original destination, and refuses it
        var target = new IPEndPoint(IPAddress.Parse(PodIp), port);
        using var client = await ConnectFromAsync(peer, target);
        using var accepted = await CaptureSandbox.AcceptAsync(agent);
        Assert.Equal(target, accepted.LocalEndPoint);
        Assert.False(app.Poll(0, SelectMode.SelectRead)); // no plaintext around the agent
    }

    [PrivilegedFact]
    public async Task Inbound_ConnectToExcludedPort_ReachesApp()
    {
        using var sandbox = new CaptureSandbox();
        var (pod, peer) = sandbox.AddLinkedNamespaces(PodIp + "/24", PeerIp + "/24");
        using var capture = BpfCapture.Open(sandbox.Options with { ExcludedPorts = [8080] });
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Any, 15006));
        using var app = CaptureSandbox.Listen(pod, AppPort);
        capture.EnrollPod(NetNamespace.GetCookie(pod), Pod);
        capture.AttachInbound(pod, Pod, agent);

        using var client = await ConnectFromAsync(peer, AppPort);
        using var accepted = await CaptureSandbox.AcceptAsync(app);
        Assert.Equal(AppPort, accepted.LocalEndPoint);
        Assert.False(agent.Poll(0, SelectMode.SelectRead));
    }

    private static async Task<Socket> ConnectFromAsync(string netnsPath, IPEndPoint target)
    {
        var socket = NetNamespace.Run(netnsPath, () => new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp));
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(3));
            try
            {
                await socket.ConnectAsync(target, timeout.Token);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException($"connect to {target} timed out");
            }
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
