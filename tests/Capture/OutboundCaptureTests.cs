using System.Net;
using System.Net.Sockets;
using Weft.Capture;

namespace Weft.Tests.Capture;

/// <summary>
/// connect4 + sockops on a real kernel: a client in an enrolled netns and in the test's cgroup is
/// steered to the agent's 127.0.0.1:15001 listener, and the agent learns where it wanted to go.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.Kernel)]
public sealed class OutboundCaptureTests
{
    private const string PodIp = "10.99.0.2";
    private const string Neighbour = "10.99.0.3"; // a local address in the netns that is not the pod's

    private static readonly PodCapture Pod = new(IPAddress.Parse(PodIp), null, FailOpen: false);

    [PrivilegedFact]
    public async Task Outbound_ConnectFromEnrolledPod_ReachesAgentListenerWithOriginalDestination()
    {
        using var sandbox = new CaptureSandbox();
        var pod = sandbox.AddNamespace("p", PodIp + "/24", Neighbour + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Loopback, 15001));
        var cookie = NetNamespace.GetCookie(pod);
        Assert.Equal(cookie, NetNamespace.GetCookie(agent));
        capture.EnrollPod(cookie, Pod);

        var client = sandbox.StartClient(pod, "10.1.2.3", 80);
        using var accepted = await CaptureSandbox.AcceptAsync(agent);
        var line = await CaptureSandbox.ReadLineAsync(client);

        var clientPort = (ushort)((IPEndPoint)accepted.RemoteEndPoint!).Port;
        Assert.Equal($"connected {clientPort}", line);
        Assert.True(capture.TryTakeOriginalDestination(cookie, clientPort, AddressFamily.InterNetwork, out var original));
        Assert.Equal(new IPEndPoint(IPAddress.Parse("10.1.2.3"), 80), original);
        Assert.False(capture.TryTakeOriginalDestination(cookie, clientPort, AddressFamily.InterNetwork, out _));
    }

    [PrivilegedTheory]
    [InlineData(0x7765_6674u)] // the mark that exempted the agent's sockets before layout version 2
    [InlineData(0x1u)]
    public async Task Outbound_ProcessWithNetAdminSettingSocketMark_IsStillCaptured(uint mark)
    {
        using var sandbox = new CaptureSandbox();
        var pod = sandbox.AddNamespace("p", PodIp + "/24", Neighbour + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Loopback, 15001));
        using var app = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Parse(Neighbour), 80));
        var cookie = NetNamespace.GetCookie(pod);
        capture.EnrollPod(cookie, Pod);

        // the client runs as root in the pod's netns: it has CAP_NET_ADMIN there, and SO_MARK sticks
        var marked = sandbox.StartClient(pod, Neighbour, 80, mark: mark);
        using var captured = await CaptureSandbox.AcceptAsync(agent);
        var clientPort = (ushort)((IPEndPoint)captured.RemoteEndPoint!).Port;
        Assert.Equal($"connected {clientPort}", await CaptureSandbox.ReadLineAsync(marked));
        Assert.True(capture.TryTakeOriginalDestination(cookie, clientPort, AddressFamily.InterNetwork, out var original));
        Assert.Equal(new IPEndPoint(IPAddress.Parse(Neighbour), 80), original);
        Assert.False(app.Poll(0, SelectMode.SelectRead)); // nothing reached the destination around the agent
    }

    [PrivilegedFact]
    public async Task Outbound_SocketClaimedByAgent_IsNotRedirected_UnclaimedTwinIs()
    {
        using var sandbox = new CaptureSandbox();
        var pod = sandbox.AddNamespace("p", PodIp + "/24", Neighbour + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Loopback, 15001));
        using var app = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Parse(Neighbour), 80));
        capture.EnrollPod(NetNamespace.GetCookie(pod), Pod);

        // a socket made in the pod's netns and in the captured cgroup, claimed the way Upstream claims
        // the agent's sockets, before its connect()
        var claimed = sandbox.StartClient(pod, Neighbour, 80, holdBeforeConnect: true);
        var fd = int.Parse((await CaptureSandbox.ReadLineAsync(claimed)).Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
        using (var duplicate = CaptureSandbox.DuplicateClientSocket(claimed, fd))
        {
            Assert.False(capture.IsAgentSocket(duplicate));
            AgentSockets.Claim(duplicate);
            Assert.True(capture.IsAgentSocket(duplicate));
        }
        CaptureSandbox.Release(claimed);
        using var direct = await CaptureSandbox.AcceptAsync(app);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(claimed));
        Assert.False(agent.Poll(0, SelectMode.SelectRead));

        // the same socket, held the same way but not claimed, is captured: the claim made the difference
        var unclaimed = sandbox.StartClient(pod, Neighbour, 80, holdBeforeConnect: true);
        Assert.StartsWith("socket", await CaptureSandbox.ReadLineAsync(unclaimed));
        CaptureSandbox.Release(unclaimed);
        using var captured = await CaptureSandbox.AcceptAsync(agent);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(unclaimed));
        Assert.False(app.Poll(0, SelectMode.SelectRead));
    }

    [PrivilegedFact]
    public async Task Outbound_ConnectFromNamespaceNotEnrolled_IsNotRedirected()
    {
        using var sandbox = new CaptureSandbox();
        var enrolled = sandbox.AddNamespace("p", PodIp + "/24");
        var other = sandbox.AddNamespace("o", PodIp + "/24", Neighbour + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        capture.EnrollPod(NetNamespace.GetCookie(enrolled), Pod);
        using var agent = CaptureSandbox.Listen(other, new IPEndPoint(IPAddress.Loopback, 15001));
        using var app = CaptureSandbox.Listen(other, new IPEndPoint(IPAddress.Parse(Neighbour), 80));

        var client = sandbox.StartClient(other, Neighbour, 80);
        using var direct = await CaptureSandbox.AcceptAsync(app);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(client));
        Assert.False(agent.Poll(0, SelectMode.SelectRead)); // nothing queued at the agent
    }

    [PrivilegedFact]
    public async Task Outbound_EnrolledPodWithoutAgentListener_IsRefused()
    {
        using var sandbox = new CaptureSandbox();
        var pod = sandbox.AddNamespace("p", PodIp + "/24", Neighbour + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var app = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Parse(Neighbour), 80));
        capture.EnrollPod(NetNamespace.GetCookie(pod), Pod);

        var client = sandbox.StartClient(pod, Neighbour, 80);
        Assert.Equal("refused", await CaptureSandbox.ReadLineAsync(client));
        Assert.False(app.Poll(0, SelectMode.SelectRead)); // fail closed: nothing leaked to the app
    }

    [PrivilegedFact]
    public async Task Outbound_FailOpenPodWithoutAgent_ReachesDestinationDirectly()
    {
        using var sandbox = new CaptureSandbox();
        var pod = sandbox.AddNamespace("p", PodIp + "/24", Neighbour + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var app = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Parse(Neighbour), 80));
        capture.EnrollPod(NetNamespace.GetCookie(pod), Pod with { FailOpen = true });

        var client = sandbox.StartClient(pod, Neighbour, 80);
        using var direct = await CaptureSandbox.AcceptAsync(app);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(client));
    }

    [PrivilegedFact]
    public async Task Outbound_FailOpenPodWhileAgentServesIt_IsCaptured()
    {
        using var sandbox = new CaptureSandbox();
        var pod = sandbox.AddNamespace("p", PodIp + "/24", Neighbour + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Loopback, 15001));
        using var inbound = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Any, 15006));
        using var app = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Parse(Neighbour), 80));
        var failOpen = Pod with { FailOpen = true };
        capture.EnrollPod(NetNamespace.GetCookie(pod), failOpen);
        capture.AttachInbound(pod, failOpen, inbound); // the agent-alive marker

        var client = sandbox.StartClient(pod, Neighbour, 80);
        using var captured = await CaptureSandbox.AcceptAsync(agent);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(client));
        Assert.False(app.Poll(0, SelectMode.SelectRead));
    }

    [PrivilegedFact]
    public async Task Outbound_ConnectToPodsOwnAddressOrLoopback_IsNotRedirected()
    {
        using var sandbox = new CaptureSandbox();
        var pod = sandbox.AddNamespace("p", PodIp + "/24", Neighbour + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Loopback, 15001));
        using var self = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Parse(PodIp), 80));
        using var loopbackTunnel = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Loopback, 15008));
        capture.EnrollPod(NetNamespace.GetCookie(pod), Pod);

        var toSelf = sandbox.StartClient(pod, PodIp, 80);
        using var a = await CaptureSandbox.AcceptAsync(self);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(toSelf));

        var toLoopback = sandbox.StartClient(pod, "127.0.0.1", 15008);
        using var b = await CaptureSandbox.AcceptAsync(loopbackTunnel);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(toLoopback));
        Assert.False(agent.Poll(0, SelectMode.SelectRead));
    }

    [PrivilegedTheory]
    [InlineData(15001)]
    [InlineData(15006)]
    [InlineData(15008)]
    [InlineData(15000)]
    [InlineData(15020)]
    [InlineData(15021)]
    public async Task Outbound_ConnectToAgentPortOnAnotherAddress_IsCapturedWithThatDestination(int port)
    {
        using var sandbox = new CaptureSandbox();
        var pod = sandbox.AddNamespace("p", PodIp + "/24", Neighbour + "/24");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Loopback, 15001));
        using var other = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Parse(Neighbour), port));
        var cookie = NetNamespace.GetCookie(pod);
        capture.EnrollPod(cookie, Pod);

        // another pod's (or a node's) agent port: the agent must see it, to refuse it
        var client = sandbox.StartClient(pod, Neighbour, port);
        using var captured = await CaptureSandbox.AcceptAsync(agent);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(client));
        var clientPort = (ushort)((IPEndPoint)captured.RemoteEndPoint!).Port;
        Assert.True(capture.TryTakeOriginalDestination(cookie, clientPort, AddressFamily.InterNetwork, out var original));
        Assert.Equal(new IPEndPoint(IPAddress.Parse(Neighbour), port), original);
        Assert.False(other.Poll(0, SelectMode.SelectRead));
    }

    [PrivilegedFact]
    public async Task Outbound_ConnectToExcludedPort_IsNotRedirected()
    {
        using var sandbox = new CaptureSandbox();
        var pod = sandbox.AddNamespace("p", PodIp + "/24", Neighbour + "/24");
        using var capture = BpfCapture.Open(sandbox.Options with { ExcludedPorts = [5432] });
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Loopback, 15001));
        using var database = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Parse(Neighbour), 5432));
        using var app = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Parse(Neighbour), 80));
        capture.EnrollPod(NetNamespace.GetCookie(pod), Pod);

        var excluded = sandbox.StartClient(pod, Neighbour, 5432);
        using var direct = await CaptureSandbox.AcceptAsync(database);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(excluded));
        Assert.False(agent.Poll(0, SelectMode.SelectRead));

        var other = sandbox.StartClient(pod, Neighbour, 80);
        using var captured = await CaptureSandbox.AcceptAsync(agent);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(other));
    }

    [PrivilegedTheory]
    [InlineData((ushort)15008)]
    [InlineData((ushort)15001)]
    [InlineData((ushort)15020)]
    [InlineData((ushort)0)]
    public void Open_ExcludingAnAgentPortOrZero_ThrowsNamingThePort(ushort port)
    {
        using var sandbox = new CaptureSandbox();
        var error = Assert.Throws<ArgumentException>(() => BpfCapture.Open(sandbox.Options with { ExcludedPorts = [5432, port] }));
        Assert.Contains($"port {port}", error.Message);
        Assert.False(Directory.Exists(sandbox.PinRoot)); // refused before anything was loaded or pinned
    }
}

/// <summary>connect6: IPv6 destinations go to [::1]:15001, v4-mapped ones to the IPv4 listener.</summary>
[Trait(TestGroups.Trait, TestGroups.Kernel)]
public sealed class OutboundCaptureIpv6Tests
{
    private static readonly PodCapture Pod = new(IPAddress.Parse("10.99.0.2"), IPAddress.Parse("fd00:99::2"), FailOpen: false);

    [PrivilegedTheory]
    [InlineData("fd00:1::3", "::1", AddressFamily.InterNetworkV6)]
    [InlineData("::ffff:10.1.2.3", "127.0.0.1", AddressFamily.InterNetwork)]
    public async Task Outbound_Ipv6Connect_ReachesAgentListenerWithOriginalDestination(string destination, string agentAddress, AddressFamily seenAs)
    {
        using var sandbox = new CaptureSandbox();
        var pod = sandbox.AddNamespace("p", "10.99.0.2/24");
        CaptureSandbox.Ip($"-n {Path.GetFileName(pod)} addr add fd00:99::2/64 dev eth0 nodad");
        using var capture = BpfCapture.Open(sandbox.Options);
        using var agent = CaptureSandbox.Listen(pod, new IPEndPoint(IPAddress.Parse(agentAddress), 15001));
        var cookie = NetNamespace.GetCookie(pod);
        capture.EnrollPod(cookie, Pod);

        var client = sandbox.StartClient(pod, destination, 80);
        using var accepted = await CaptureSandbox.AcceptAsync(agent);
        Assert.StartsWith("connected", await CaptureSandbox.ReadLineAsync(client));

        var clientPort = (ushort)((IPEndPoint)accepted.RemoteEndPoint!).Port;
        Assert.True(capture.TryTakeOriginalDestination(cookie, clientPort, seenAs, out var original));
        var expected = IPAddress.Parse(destination);
        Assert.Equal(new IPEndPoint(expected.IsIPv4MappedToIPv6 ? expected.MapToIPv4() : expected, 80), original);
    }
}

/// <summary>What the operator reads when the machine is not ready for capture.</summary>
[Trait(TestGroups.Trait, TestGroups.Kernel)]
public sealed class CaptureRefusalTests
{
    [PrivilegedFact]
    public void Open_CgroupPathNotCgroupV2_ThrowsNamingCauseAndFix()
    {
        using var sandbox = new CaptureSandbox();
        var error = Assert.Throws<CaptureException>(() => BpfCapture.Open(sandbox.Options with { CgroupPath = "/tmp" }));
        Assert.Contains("not cgroup v2", error.Message);
        Assert.Contains("use a directory under", error.Message);
    }

    [PrivilegedFact]
    public void Load_ProgramTheVerifierRejects_ThrowsWithTailOfVerifierLog()
    {
        using var sandbox = new CaptureSandbox();
        var dir = Directory.CreateTempSubdirectory("weft-verifier-");
        try
        {
            // reads past the end of the sk_lookup context: the verifier must refuse it
            var source = Path.Combine(dir.FullName, "bad.bpf.c");
            File.WriteAllText(source, string.Join("\n",
                "#include <linux/bpf.h>",
                "#include <bpf/bpf_helpers.h>",
                "SEC(\"sk_lookup\")",
                "int bad(struct bpf_sk_lookup *ctx) { return *(volatile __u32 *)((char *)ctx + 4096) ? SK_PASS : SK_DROP; }",
                "char LICENSE[] SEC(\"license\") = \"GPL\";",
                ""));
            var obj = Path.Combine(dir.FullName, "bad.bpf.o");
            using (var clang = System.Diagnostics.Process.Start("clang", ["-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", source, "-o", obj]))
            {
                clang.WaitForExit();
                Assert.Equal(0, clang.ExitCode);
            }
            Weft.Capture.Internal.LibbpfLog.Install();

            var error = Assert.Throws<CaptureException>(() =>
                Weft.Capture.Internal.BpfObject.Load("bad.bpf.o", File.ReadAllBytes(obj), sandbox.PinRoot).Dispose());

            Assert.Contains("verifier rejected", error.Message);
            Assert.Contains("invalid bpf_context access", error.Message); // from the kernel's own log
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [PrivilegedFact]
    public void Open_PinRootNotOnBpffs_ThrowsNamingCauseAndFix()
    {
        using var sandbox = new CaptureSandbox();
        var error = Assert.Throws<CaptureException>(() => BpfCapture.Open(sandbox.Options with { PinRoot = "/tmp/weft-" + sandbox.RunId }));
        Assert.Contains("not on a bpf filesystem", error.Message);
        Assert.Contains("mount -t bpf bpf", error.Message);
        Assert.False(Directory.Exists("/tmp/weft-" + sandbox.RunId));
    }
}
