// The REST client: JSON in, JSON out, one error type carrying the server's envelope.

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error || `HTTP ${status}`);
    this.status = status; // 0: the request never got an answer
    this.code = body?.code || (status ? 'http_error' : 'network_error');
    this.fields = body?.fields || [];
  }
}

/**
 * `token()` returns the current token; `onUnauthorized()` runs when a signed-in
 * request gets a 401 (token expired or revoked).
 */
export function createApi(token, onUnauthorized) {
  async function call(method, path, body) {
    const headers = {};
    const t = token();
    if (t) headers.Authorization = `Bearer ${t}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(`/api/v1${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
    } catch {
      throw new ApiError(0, { error: 'The server cannot be reached.' });
    }
    const text = await res.text().catch(() => '');
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      /* not JSON: keep null */
    }
    if (!res.ok) {
      if (res.status === 401 && t) onUnauthorized();
      throw new ApiError(res.status, data);
    }
    return data;
  }
  const q = (params) => {
    const s = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v != null) s.set(k, v);
    return s.toString();
  };
  return {
    register: (username, password, display_name) =>
      call('POST', '/auth/register', { username, password, display_name: display_name || null }),
    login: (username, password) => call('POST', '/auth/login', { username, password }),
    me: () => call('GET', '/auth/me'),
    searchUsers: (query) => call('GET', `/users?${q({ q: query, limit: 100 })}`),
    chats: (offset = 0) => call('GET', `/chats?${q({ limit: 100, offset, with_members: true })}`),
    chat: (id) => call('GET', `/chats/${id}`),
    createChat: (body) => call('POST', '/chats', body),
    renameChat: (id, name) => call('PUT', `/chats/${id}`, { name }),
    deleteChat: (id) => call('DELETE', `/chats/${id}`),
    addMembers: (id, member_ids) => call('POST', `/chats/${id}/members`, { member_ids }),
    removeMember: (id, userId) => call('DELETE', `/chats/${id}/members/${userId}`),
    setAdmin: (id, userId, is_admin) => call('PUT', `/chats/${id}/members/${userId}`, { is_admin }),
    markRead: (id, message_id) => call('POST', `/chats/${id}/read`, { message_id }),
    history: (chatId, params) => call('GET', `/messages/chat/${chatId}?${q(params)}`),
    message: (id) => call('GET', `/messages/${id}`),
    sendMessage: (chat_id, content, client_id) => call('POST', '/messages', { chat_id, content, client_id }),
    editMessage: (id, content) => call('PUT', `/messages/${id}`, { content }),
    deleteMessage: (id) => call('DELETE', `/messages/${id}`),
    react: (id, emoji, on) => call(on ? 'PUT' : 'DELETE', `/messages/${id}/reactions/${encodeURIComponent(emoji)}`),
    pins: (chatId) => call('GET', `/chats/${chatId}/pins`),
    pin: (chatId, id, on) => call(on ? 'PUT' : 'DELETE', `/chats/${chatId}/pins/${id}`),
    search: (query, chat_id) => call('GET', `/messages/search?${q({ q: query, chat_id, limit: 30 })}`),
  };
}
