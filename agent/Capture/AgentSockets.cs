using System.Net.Sockets;

namespace Weft.Capture;

/// <summary>
/// Claims sockets the agent makes inside pods' network namespaces as its own, so capture never
/// takes them: each is registered in `agent_sockets` of every capture open in this process (one in
/// the agent; tests open several). Code that opens upstream sockets reaches capture through here
/// because it is handed only the proxy's options, not the capture.
/// </summary>
internal static class AgentSockets
{
    private static readonly Lock Gate = new();
    private static BpfCapture[] _open = [];

    /// <summary>Registers <paramref name="socket"/> as the agent's; call it before connect().</summary>
    public static void Claim(Socket socket)
    {
        // a copy-on-write array: claiming (once per upstream connection) reads it without a lock
        foreach (var capture in Volatile.Read(ref _open))
        {
            capture.ClaimForAgent(socket);
        }
    }

    /// <summary>Lets the SYN of a transparent delivery reach the app (add) or forgets it: <see cref="BpfCapture.MarkDelivery"/>.</summary>
    public static void MarkDelivery(System.Net.IPEndPoint from, System.Net.IPEndPoint to, bool add)
    {
        foreach (var capture in Volatile.Read(ref _open))
        {
            capture.MarkDelivery(from, to, add);
        }
    }

    internal static void Add(BpfCapture capture)
    {
        lock (Gate)
        {
            _open = [.. _open, capture];
        }
    }

    internal static void Remove(BpfCapture capture)
    {
        lock (Gate)
        {
            _open = Array.FindAll(_open, c => !ReferenceEquals(c, capture));
        }
    }
}
